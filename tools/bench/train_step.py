"""Our jitted CLIP train step against a PyTorch peer doing the same work, in the same run.

  python -m tools.bench.train_step [--size tiny|S16|B16] [--batch B] [--repeats R]
      [--steps_per_repeat K] [--dtype float32|bfloat16] [--peak_n 4096]

Ours: the trainer's own step (`make_train_setup` + `make_train_step`: forward, backward, global
norm clipping, AdamW with masked weight decay, logit-scale clamp) on all local JAX devices.
Peers (`--peers`, each in its own process): `hf`, Hugging Face `CLIPModel` built from a
`CLIPConfig` with the same dims (random init, same activation, same parameter count, printed),
`model(..., return_loss=True)` (the symmetric CE that is our 'softmax' loss); `open_clip`,
`open_clip.model.CLIP` with the same dims and OpenCLIP's own `ClipLoss`. Both:
`clip_grad_norm_(1.0)` and `torch.optim.AdamW` (fused where torch supports it on the device,
else foreach) with the same hyper-parameters and decay mask. float32 on CPU; with `--dtype bfloat16` ours computes in
bfloat16 (model.dtype) and the peer runs under `torch.autocast(bfloat16)` (meant for GPU; bf16
matmuls on CPUs without AVX-512 are very slow in PyTorch).

Both get one warm-up step (compile / allocator) excluded from timing; then `--repeats`
rounds, each timing `--steps_per_repeat` steps of ours and of the peer, in alternating order
(ours first on even rounds, the peer first on odd ones), so that load drift on a shared machine
hits both alike. In each round each system first runs `--round_warmup` untimed steps: a step
that follows seconds of idling (here: the other system's turn) re-faults its freed working
memory and ran 1-2 s slower at S16 on this VM (RESULTS.md), a cost a training loop running
steps back to back does not pay. The peer runs in its own process (`PeerProcess`).
Reported: median examples/s over rounds, step ms, analytic model GFLOPs/step
(`synthclip_jax/model_flops.py`), achieved GFLOP/s, and MFU against the matmul peak measured in
this run with a large `jnp.dot`. One line `ratio ours/NAME = X.XX` per peer, then the last line
`ratio ours/peer = X.XX` (examples/s), against the first peer of `--peers` (default hf).

PyTorch's OpenMP threads spin-wait by default; on a shared, oversubscribed CPU that collapses
the peer (measured here at load ~8 on 2 cores, tiny size: 2.8 ex/s with 2 spinning threads vs
150-160 ex/s with OMP_WAIT_POLICY=PASSIVE), so the script sets OMP_WAIT_POLICY=PASSIVE (unless
set) before torch is imported. XLA's CPU thread pool is not OpenMP and is unaffected.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (libgomp) is loaded

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from synthclip_jax.data.tokenizer import EOT_ID, PAD_ID, SOT_ID, VOCAB_SIZE  # noqa: E402
from synthclip_jax.model_flops import clip_step_flops
from tools.bench.flops import measure_peak_flops

# name -> image tower (width, depth, heads, patch), image size, text tower (width, depth, heads),
# embed dim, default batch.
SIZES = {
    "tiny": dict(image=(128, 2, 2, 16), image_size=64, text=(128, 2, 2), embed_dim=128, batch=8),
    "S16": dict(image=(384, 12, 6, 16), image_size=224, text=(384, 12, 6), embed_dim=384,
                batch=16),
    "B16": dict(image=(768, 12, 12, 16), image_size=224, text=(512, 12, 8), embed_dim=512,
                batch=64),
}
CONTEXT = 77


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=0, help="global batch (0: the size's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps_per_repeat", type=int, default=3)
    p.add_argument("--round_warmup", type=int, default=1,
                   help="untimed steps of each system at the start of each round")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--activation", default="quick_gelu", choices=("quick_gelu", "gelu"),
                   help="both models (HF CLIP's default is quick_gelu)")
    p.add_argument("--peak_n", type=int, default=4096, help="size of the peak-FLOP/s jnp.dot")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: os.cpu_count())")
    p.add_argument("--peers", default="hf,open_clip",
                   help="comma-separated PyTorch peers: hf, open_clip (the first is `peer`)")
    p.add_argument("--peer_adamw", default="fused", choices=("fused", "foreach", "default"),
                   help="torch AdamW implementation (fused: one kernel; ~15x faster than the "
                        "per-tensor default on CPU)")
    return p.parse_args(argv)


def make_inputs(batch: int, image_size: int, seed: int = 0):
    """Images (B, H, W, 3) float32 and tokens (B, 77) int32: SOT, random ids, EOT, padding."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32)
    tokens = np.full((batch, CONTEXT), PAD_ID, np.int32)
    for i in range(batch):
        n = int(rng.integers(5, CONTEXT - 1))
        tokens[i, 0] = SOT_ID
        tokens[i, 1:n] = rng.integers(1, SOT_ID, n - 1)
        tokens[i, n] = EOT_ID
    return images, tokens


def our_config(spec, batch, dtype, activation):
    from synthclip_jax.config.base import base

    c = base()
    vw, vd, vh, vp = spec["image"]
    tw, td, th = spec["text"]
    c.model.image.update(dict(width=vw, depth=vd, heads=vh, patch_size=vp))
    c.model.text.update(dict(width=tw, depth=td, heads=th))
    c.model.embed_dim = spec["embed_dim"]
    c.model.activation = activation
    c.model.dtype = dtype
    c.data.image_size = spec["image_size"]
    c.batch_size = batch
    return c


class Ours:
    def __init__(self, config, images, tokens):
        import jax

        from synthclip_jax import sharding
        from synthclip_jax.train.state import count_params, make_train_setup
        from synthclip_jax.train.step import make_train_step

        self.jax = jax
        mesh = sharding.make_mesh(config.mesh)
        setup = make_train_setup(config, mesh)
        self.state = setup.init()
        self.num_params = count_params(self.state["params"])
        self.step_fn = make_train_step(config, setup, mesh)
        self.batch = sharding.global_batch({"image": images, "text": tokens}, mesh)
        self.devices = f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}"

    def run(self, steps: int):
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step_fn(self.state, self.batch)
        self.jax.block_until_ready(metrics)
        return float(metrics["loss"])


def hf_model(config):
    """-> (HF CLIPModel, loss(model, ids, pixels), attention implementation)."""
    from transformers import CLIPConfig, CLIPModel

    m = config.model
    act = m.activation
    hf = CLIPConfig(
        text_config=dict(hidden_size=m.text.width, intermediate_size=int(m.text.width * 4),
                         num_hidden_layers=m.text.depth, num_attention_heads=m.text.heads,
                         max_position_embeddings=CONTEXT, vocab_size=VOCAB_SIZE,
                         hidden_act=act, layer_norm_eps=m.layernorm_eps,
                         eos_token_id=EOT_ID, bos_token_id=SOT_ID),
        vision_config=dict(hidden_size=m.image.width,
                           intermediate_size=int(m.image.width * 4),
                           num_hidden_layers=m.image.depth, num_attention_heads=m.image.heads,
                           image_size=config.data.image_size, patch_size=m.image.patch_size,
                           hidden_act=act, layer_norm_eps=m.layernorm_eps),
        projection_dim=m.embed_dim)
    model = CLIPModel(hf)

    def loss(model, ids, pixels):
        return model(input_ids=ids, pixel_values=pixels, return_loss=True).loss

    return model, loss, getattr(model.config, "_attn_implementation", "?")


def open_clip_model(config):
    """-> (open_clip.model.CLIP, loss with open_clip's ClipLoss, attention implementation)."""
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP

    m = config.model
    vision = dict(width=m.image.width, layers=m.image.depth, head_width=m.image.width //
                  m.image.heads, patch_size=m.image.patch_size, image_size=config.data.image_size,
                  mlp_ratio=m.image.mlp_ratio, norm_kwargs=dict(eps=m.layernorm_eps))
    text = dict(width=m.text.width, layers=m.text.depth, heads=m.text.heads,
                context_length=CONTEXT, vocab_size=VOCAB_SIZE, mlp_ratio=m.text.mlp_ratio,
                norm_kwargs=dict(eps=m.layernorm_eps))
    model = CLIP(m.embed_dim, vision, text, quick_gelu=m.activation == "quick_gelu")
    clip_loss = ClipLoss()

    def loss(model, ids, pixels):
        image, text, scale = model(pixels, ids)
        return clip_loss(image, text, scale)

    return model, loss, "torch MultiheadAttention"


PEERS = {"hf": ("HF transformers CLIPModel", hf_model),
         "open_clip": ("open_clip.model.CLIP + ClipLoss", open_clip_model)}


def make_adamw(torch, params, adamw: str, **kwargs):
    """torch AdamW: fused where this torch supports it (on CPU since 2.4), else foreach."""
    if adamw == "default":
        return torch.optim.AdamW(params, **kwargs), adamw
    try:
        return torch.optim.AdamW(params, **{adamw: True}, **kwargs), adamw
    except (RuntimeError, ValueError):  # fused unsupported here
        return torch.optim.AdamW(params, foreach=True, **kwargs), "foreach"


class TorchSteps:
    """`run(steps)` for a PyTorch peer with `step()`, `torch` and `device`."""

    def run(self, steps: int):
        loss = None
        for _ in range(steps):
            loss = self.step()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return float(loss.detach())


class Peer(TorchSteps):
    def __init__(self, config, images, tokens, dtype, threads, adamw="fused", kind="hf"):
        import torch

        torch.set_num_threads(threads or os.cpu_count())
        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.name = PEERS[kind][0]
        model, self.loss, self.attn_impl = PEERS[kind][1](config)
        self.model = model.to(self.device).train()
        self.num_params = sum(p.numel() for p in self.model.parameters())
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            skip = p.ndim < 2 or any(k in name for k in (
                "position_embedding", "positional_embedding", "class_embedding"))
            (no_decay if skip else decay).append(p)
        self.opt, self.adamw = make_adamw(
            torch, [dict(params=decay, weight_decay=config.weight_decay),
                    dict(params=no_decay, weight_decay=0.0)], adamw,
            lr=config.lr, betas=(config.optim.b1, config.optim.b2), eps=config.optim.eps)
        self.clip = config.optim.grad_clip_norm
        self.scale_max = config.model.logit_scale_max
        self.pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.ids = torch.from_numpy(tokens).long().to(self.device)
        self.autocast = dtype == "bfloat16"

    def step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss(self.model, self.ids, self.pixels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, self.scale_max)
        return loss



def _peer_worker(conn, factory, args):
    peer = factory(*args)
    conn.send(dict(name=peer.name, version=peer.torch.__version__, device=peer.device,
                   threads=peer.torch.get_num_threads(), attn_impl=peer.attn_impl,
                   adamw=peer.adamw, num_params=peer.num_params))
    while (steps := conn.recv()) is not None:
        conn.send(peer.run(steps))


class PeerProcess:
    """The peer in a process of its own, driven over a pipe, so rounds still interleave in time.
    Each system then has its own malloc heap, thread pools and environment, as it would for a
    user running only one of them; neither can leave memory or threads behind for the other.
    (Measured: this is for isolation, not speed; neither side got faster by the move.)"""

    def __init__(self, *args, factory=Peer):
        """`factory(*args)` builds the peer in the child (a module-level class: spawn pickles
        it by name); it has the attributes `_peer_worker` reports and `run(steps)`."""
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_peer_worker, args=(child, factory, args), daemon=True)
        self.process.start()
        self.info = self.conn.recv()

    def run(self, steps: int) -> float:
        self.conn.send(steps)
        return self.conn.recv()

    def close(self):
        self.conn.send(None)
        self.process.join(timeout=60)


def timed(runner, steps):
    start = time.perf_counter()
    loss = runner.run(steps)
    return time.perf_counter() - start, loss


def run_rounds(runners: dict, batch: int, args) -> dict:
    """One warm-up step each (excluded), then `args.repeats` rounds in rotating order, each
    timing `args.steps_per_repeat` steps per runner after `args.round_warmup` untimed ones;
    -> {name: [examples/s per round]} (printed as it goes)."""
    first = []
    for name, runner in runners.items():
        t0 = time.perf_counter()
        loss = runner.run(1)
        first.append(f"{name} {time.perf_counter() - t0:.1f} s (loss {loss:.4f})")
    print("warm-up step (excluded; ours incl. compile): " + ", ".join(first), flush=True)

    k = args.steps_per_repeat
    rates = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # each goes first in turn
        line = []
        for name in order:
            if args.round_warmup:
                runners[name].run(args.round_warmup)
            seconds, _ = timed(runners[name], k)
            rates[name].append(k * batch / seconds)
            line.append(f"{name} {k * batch / seconds:8.2f} ex/s")
        print(f"  round {r + 1}/{args.repeats}: " + ", ".join(line), flush=True)
    return rates


def load_line() -> str:
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average: unavailable"
    return f"load average (1, 5, 15 min): {load} on {os.cpu_count()} CPUs"


def main(argv=None):
    args = parse_args(argv)
    spec = SIZES[args.size]
    batch = args.batch or spec["batch"]
    config = our_config(spec, batch, args.dtype, args.activation)
    images, tokens = make_inputs(batch, spec["image_size"])
    vw, vd, vh, vp = spec["image"]
    tw, td, th = spec["text"]
    flops = clip_step_flops(batch=batch, image_size=spec["image_size"], patch=vp, vit_width=vw,
                            vit_depth=vd, text_width=tw, text_depth=td, context=CONTEXT,
                            embed_dim=spec["embed_dim"])

    ours = Ours(config, images, tokens)
    kinds = [k for k in args.peers.split(",") if k]
    unknown = sorted(set(kinds) - set(PEERS))
    if not kinds or unknown:
        raise SystemExit(f"--peers {args.peers}: choose from {', '.join(PEERS)}")
    # The first peer keeps the row name "peer" (and the last line's ratio); others their kind.
    peers = {("peer" if i == 0 else kind): PeerProcess(config, images, tokens, args.dtype,
                                                       args.threads, args.peer_adamw, kind)
             for i, kind in enumerate(kinds)}
    print(f"size {args.size}: ViT {vw}x{vd} (heads {vh}, patch {vp}) at {spec['image_size']} px, "
          f"text {tw}x{td} (heads {th}), embed {spec['embed_dim']}, global batch {batch}, "
          f"{args.dtype}, {args.activation}")
    print(f"ours: {ours.devices}, {ours.num_params:,} params; both: "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    for name, peer in peers.items():
        info = peer.info
        print(f"ours: {ours.num_params:,} params; {name} (own process): {info['name']}, torch "
              f"{info['version']} on {info['device']} ({info['threads']} threads, attn "
              f"{info['attn_impl']}, AdamW {info['adamw']}, OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY')}), {info['num_params']:,} params")
        if ours.num_params != info["num_params"]:
            print(f"WARNING: {name}: parameter counts differ by "
                  f"{ours.num_params - info['num_params']:+,}")

    rates = run_rounds({"ours": ours, **peers}, batch, args)
    for peer in peers.values():
        peer.close()

    peak = measure_peak_flops(args.peak_n, dtype=args.dtype)
    print(f"matmul peak: {args.peak_n}x{args.peak_n} jnp.dot {args.dtype}, median of 5: "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"model FLOPs/step (matmuls, fwd+bwd = 3 x fwd): {flops['step'] / 1e9:.1f} GFLOP "
          f"(image {flops['image'] / 1e9:.2f}, text {flops['text'] / 1e9:.2f} GFLOP forward)")
    print(f"{'':9} {'examples/s':>11} {'min..max':>17} {'step ms':>9} {'GFLOP/s':>9} {'MFU':>7}")
    median = {}
    for name, vals in rates.items():
        median[name] = statistics.median(vals)
        step_s = batch / median[name]
        achieved = flops["step"] / step_s
        print(f"{name:9} {median[name]:11.2f} {min(vals):8.2f}..{max(vals):<8.2f} "
              f"{1e3 * step_s:9.1f} {achieved / 1e9:9.1f} {100 * achieved / peak:6.1f}%")
    print(f"{load_line()} (at the end)")

    def ratio(name):
        value = median["ours"] / median[name]
        return value if math.isfinite(value) else 0.0

    for name, peer in peers.items():
        print(f"ratio ours/{kinds[0] if name == 'peer' else name} = {ratio(name):.2f} "
              f"({peer.info['name']})")
    print(f"ratio ours/peer = {ratio('peer'):.2f}")


if __name__ == "__main__":
    main()
