"""Our jitted train step with a ResNet image tower against a PyTorch peer doing the same work.

  python -m tools.bench.resnet_step [--depth 50] [--batch 8] [--image_size 224]
      [--text_width 256] [--text_depth 4] [--repeats 3] [--steps_per_repeat 2]

Ours: the trainer's own step (`make_train_setup` + `make_train_step`) for a CLIP with
`model.image.tower=resnet` (torchvision's ResNet-{depth}, BatchNorm in train mode: batch
statistics), a small causal text tower, the softmax loss, AdamW with gradient clipping.
The peer (own process, `train_step.PeerProcess`): torchvision's `resnet{depth}` with its
classifier replaced by a bias-free Linear to embed_dim (our `proj`), OpenCLIP's
`TextTransformer` with the same dims, a learnable logit scale and OpenCLIP's `ClipLoss`,
`clip_grad_norm_` and fused AdamW with the same hyper-parameters, in train mode (BatchNorm on
batch statistics, running statistics updated). Same batch, same image size. Rounds, warm-ups
and the peer's process are `train_step.py`'s (`run_rounds`); the last line is
`ratio ours/peer = X.XX` (examples/s).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (libgomp): train_step.py

import argparse  # noqa: E402
import statistics  # noqa: E402

from synthclip_jax.config.choices import RESNET_DEPTHS  # noqa: E402

from tools.bench.train_step import (CONTEXT, Ours, PeerProcess, TorchSteps,  # noqa: E402
                                    load_line, make_adamw, make_inputs, run_rounds)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=50, choices=RESNET_DEPTHS)
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--text_width", type=int, default=256)
    p.add_argument("--text_depth", type=int, default=4)
    p.add_argument("--text_heads", type=int, default=4)
    p.add_argument("--embed_dim", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps_per_repeat", type=int, default=2)
    p.add_argument("--round_warmup", type=int, default=1,
                   help="untimed steps of each system at the start of each round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: os.cpu_count())")
    return p.parse_args(argv)


def our_config(args):
    from synthclip_jax.config.base import base
    c = base()
    c.model.image.update(tower="resnet", resnet_depth=args.depth, resnet_width=64)
    c.model.text.update(width=args.text_width, depth=args.text_depth, heads=args.text_heads)
    c.model.embed_dim = args.embed_dim
    c.model.activation = "gelu"
    c.data.image_size = args.image_size
    c.batch_size = args.batch
    return c


class ResNetPeer(TorchSteps):
    """torchvision ResNet + OpenCLIP TextTransformer + ClipLoss, fused AdamW (see the module
    docstring); the attributes `train_step._peer_worker` reports."""

    def __init__(self, config, images, tokens, threads):
        import torch
        import torchvision
        from open_clip.loss import ClipLoss
        from open_clip.transformer import TextTransformer

        torch.set_num_threads(threads or os.cpu_count())
        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        m = config.model
        self.name = f"torchvision resnet{m.image.resnet_depth} + open_clip TextTransformer"
        self.attn_impl = "torch MultiheadAttention"
        image = getattr(torchvision.models, f"resnet{m.image.resnet_depth}")()
        image.fc = torch.nn.Linear(image.fc.in_features, m.embed_dim, bias=False)
        text = TextTransformer(context_length=CONTEXT, vocab_size=m.text.vocab_size,
                               width=m.text.width, heads=m.text.heads, layers=m.text.depth,
                               mlp_ratio=m.text.mlp_ratio, output_dim=m.embed_dim,
                               act_layer=torch.nn.GELU)
        self.model = torch.nn.ModuleDict(dict(image=image, text=text)).to(self.device).train()
        self.logit_scale = torch.nn.Parameter(torch.tensor(m.logit_scale_init,
                                                           device=self.device))
        params = [*self.model.parameters(), self.logit_scale]
        stats = [b for n, b in self.model.named_buffers() if n.endswith(("mean", "var"))]
        self.num_params = sum(p.numel() for p in params) + sum(b.numel() for b in stats)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.opt, self.adamw = make_adamw(
            torch, [dict(params=decay, weight_decay=config.weight_decay),
                    dict(params=no_decay, weight_decay=0.0)], "fused",
            lr=config.lr, betas=(config.optim.b1, config.optim.b2), eps=config.optim.eps)
        self.params, self.clip = params, config.optim.grad_clip_norm
        self.scale_max = m.logit_scale_max
        self.loss = ClipLoss()
        self.pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.ids = torch.from_numpy(tokens).long().to(self.device)

    def step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        image = torch.nn.functional.normalize(self.model["image"](self.pixels), dim=-1)
        text = torch.nn.functional.normalize(self.model["text"](self.ids), dim=-1)
        loss = self.loss(image, text, self.logit_scale.exp())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.scale_max)
        return loss



def main(argv=None):
    args = parse_args(argv)
    config = our_config(args)
    images, tokens = make_inputs(args.batch, args.image_size)
    print(f"ResNet-{args.depth} at {args.image_size} px, text {args.text_width}x"
          f"{args.text_depth} (heads {args.text_heads}), embed {args.embed_dim}, global batch "
          f"{args.batch}, float32, softmax loss, AdamW; {load_line()} (at the start)",
          flush=True)
    ours = Ours(config, images, tokens)
    peer = PeerProcess(config, images, tokens, args.threads, factory=ResNetPeer)
    info = peer.info
    print(f"ours: {ours.devices}, {ours.num_params:,} params; "
          f"peer (own process): {info['name']}, torch {info['version']} on {info['device']} "
          f"({info['threads']} threads, AdamW {info['adamw']}), {info['num_params']:,} params "
          "(both: BatchNorm running statistics included)")
    if ours.num_params != info["num_params"]:
        print(f"WARNING: parameter counts differ by {ours.num_params - info['num_params']:+,}")
    rates = run_rounds({"ours": ours, "peer": peer}, args.batch, args)
    peer.close()
    print(f"{'':9} {'examples/s':>11} {'min..max':>17} {'step ms':>9}")
    median = {}
    for name, values in rates.items():
        median[name] = statistics.median(values)
        print(f"{name:9} {median[name]:11.2f} {min(values):8.2f}..{max(values):<8.2f} "
              f"{1e3 * args.batch / median[name]:9.1f}")
    print(f"{load_line()} (at the end)")
    print(f"ratio ours/peer = {median['ours'] / median['peer']:.2f}")


if __name__ == "__main__":
    main()
