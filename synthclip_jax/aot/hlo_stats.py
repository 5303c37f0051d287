"""FLOPs and collectives of a compiled (per-device, SPMD-partitioned) HLO module, from its text.

Why parse the text: XLA's cost analysis (TPU's `compiled.cost_analysis()`, and the generic one
run on a GPU module) counts a while loop's body once, and the towers scan their layers, so it
undercounts a 12-layer tower about 12x; a GPU executable gives no cost analysis at all. Here
every computation is weighted by how often it runs: a while body by its trip count (XLA's
`known_trip_count` where the backend writes it, else the bound its condition compares the
counter with), nested loops multiplied out.

FLOPs counted are the matmuls' (the MFU convention of model_flops.py): `dot` (2 x output
elements x contracted size), `convolution` (TPU writes its dots as convolutions: 2 x output
elements x kernel elements / output features) and cuBLAS GEMM custom calls on GPU. Collectives
(all-gather, all-reduce, reduce-scatter, all-to-all, collective-permute; sync or async start)
are listed with the bytes of their result, grouped by the loop that runs them.
"""
import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all")
GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cudnn$matmul")

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-$]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_PARAM = re.compile(r"%?([\w.\-]+):\s*(\([^)]*\)|[a-z]\w*\[[\d,]*\])")


def shape_dims(text: str) -> list:
    """'f32[8,16]{1,0}' -> [('f32', (8, 16))]; a tuple gives one entry per element."""
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(text)]


def shape_bytes(text: str) -> int:
    return sum(DTYPE_BYTES.get(t, 4) * math.prod(d) for t, d in shape_dims(text))


_ARRAY_LAYOUT = re.compile(r"\b([a-z]\w*)\[([\d,]*)\](\{[^{}]*(?:\([^)]*\)[^{}]*)*\})?")


_MEMORY_SPACE = re.compile(r"S\(([1-9]\d*)\)")


def hbm_bytes(text: str) -> int:
    """shape_bytes of the arrays in the default memory space (HBM) only: a layout's `S(n)`,
    n > 0, places an array elsewhere (TPU VMEM / CMEM / semaphores, host memory; the numbers
    differ by chip), which is no HBM traffic."""
    return sum(DTYPE_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims, layout in _ARRAY_LAYOUT.findall(text)
               if not _MEMORY_SPACE.search(layout))


@dataclasses.dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    rest: str  # operands and attributes


@dataclasses.dataclass
class Computation:
    name: str
    instrs: list
    shapes: dict  # value name -> shape text (parameters and instructions)
    is_entry: bool = False
    root: str = ""  # the ROOT instruction's name


def parse_module(text: str) -> dict:
    comps, current = {}, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = Computation(m[2], [], {}, bool(m[1]))
                for pname, pshape in _PARAM.findall(m[3]):
                    current.shapes[pname] = pshape
            continue
        if line.strip() == "}":
            comps[current.name] = current
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            ins = Instr(m[2], m[3], m[4], m[5])
            current.instrs.append(ins)
            if m[1]:
                current.root = ins.name
            current.shapes[ins.name] = ins.shape
    return comps


def _operands(ins: Instr) -> list:
    """Operand names (the part before the closing parenthesis of the call)."""
    depth, end = 1, 0
    for end, ch in enumerate(ins.rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            break
    return re.findall(r"%([\w.\-]+)", ins.rest[:end])


def _attr_dims(rest: str, key: str) -> tuple:
    m = re.search(key + r"=\{([\d,]*)\}", rest)
    return tuple(int(d) for d in m[1].split(",") if d) if m else ()


def _first_dims(comp: Computation, name: str) -> tuple:
    found = shape_dims(comp.shapes.get(name, ""))
    return found[0][1] if found else ()


def instr_flops(comp: Computation, ins: Instr) -> int:
    out = shape_dims(ins.shape)
    if not out:
        return 0
    if ins.opcode == "dot":
        lhs = _first_dims(comp, _operands(ins)[0])
        k = math.prod(lhs[i] for i in _attr_dims(ins.rest, "lhs_contracting_dims"))
        return 2 * math.prod(out[0][1]) * k
    if ins.opcode == "convolution":
        return conv_flops(comp, ins, out[0][1])
    if ins.opcode == "custom-call" and any(t in ins.rest for t in GEMM_TARGETS):
        m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.rest)
        lhs = _first_dims(comp, _operands(ins)[0])
        if not m or not lhs:
            return 0
        k = math.prod(lhs[int(d.strip('" '))] for d in m[1].split(",") if d.strip('" '))
        return 2 * math.prod(out[0][1]) * k  # out[0]: the product (a workspace may follow)
    return 0


def _window(rest: str, key: str, n: int, default: int) -> list:
    m = re.search(r"\b" + key + r"=([\d_x\-]+)", rest)
    if not m:
        return [default] * n
    return [tuple(int(v) for v in part.split("_")) if "_" in part else int(part)
            for part in m[1].split("x")]


def conv_flops(comp: Computation, ins: Instr, out: tuple) -> int:
    """2 x output batch x output features x input features (per group) x the (output, window)
    position pairs that land on real input (not padding, not a dilation hole), per spatial
    dimension: HloCostAnalysis's count. TPU writes dots as convolutions whose padding and
    dilation turn batch dimensions into windows, so a plain output x kernel product would
    overcount."""
    ops = _operands(ins)
    lhs, rhs = _first_dims(comp, ops[0]), _first_dims(comp, ops[1])
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.rest)
    if not lhs or not rhs or not labels:
        return 0
    l_lab, r_lab, o_lab = labels[1], labels[2], labels[3]
    spatial = sorted(c for c in o_lab if c.isdigit())
    n = len(spatial)
    size = [rhs[r_lab.index(d)] for d in spatial]
    stride = _window(ins.rest, "stride", n, 1)
    pad = _window(ins.rest, "pad", n, (0, 0))
    lhs_dil = _window(ins.rest, "lhs_dilate", n, 1)
    rhs_dil = _window(ins.rest, "rhs_dilate", n, 1)
    pairs = 1
    for j, d in enumerate(spatial):
        in_size, out_size = lhs[l_lab.index(d)], out[o_lab.index(d)]
        extent = (in_size - 1) * lhs_dil[j]  # last real input position, dilated
        valid = 0
        for k in range(size[j]):
            for o in range(out_size):
                p = o * stride[j] + k * rhs_dil[j] - pad[j][0]
                valid += 0 <= p <= extent and p % lhs_dil[j] == 0
        pairs *= valid
    return 2 * out[o_lab.index("b")] * out[o_lab.index("f")] * rhs[r_lab.index("i")] * pairs


def _trip_count(comps: dict, ins: Instr) -> int:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.rest)
    if m:
        return int(m[1])
    cond = re.search(r"condition=%?([\w.\-]+)", ins.rest)
    cond = comps.get(cond[1]) if cond else None
    bounds = []
    for c in (cond.instrs if cond else ()):
        if c.opcode == "constant" and re.match(r"[su]\d+\[\]", c.shape):
            bounds.append(int(re.match(r"\s*(-?\d+)", c.rest)[1]))
    return max(bounds) if bounds else 1  # `i < N` with the counter from 0


@dataclasses.dataclass
class Loop:
    name: str  # the while instruction
    op_name: str  # its JAX source path (metadata), e.g. ".../transpose(jvp())/while"
    trips: int
    depth: int  # 1 = a loop of the entry computation

    @property
    def direction(self) -> str:
        return "backward" if "transpose(" in self.op_name else "forward"


# Opcodes that move no bytes through HBM themselves (aliases, control flow whose callees are
# counted, async "done" halves) and collectives (the interconnect, counted apart).
NO_HBM_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while",
                  "call", "conditional", "after-all", "partition-id", "replica-id",
                  "opt-barrier", "add-dependency", "copy-done", "send-done", "recv-done"}


def _fused_params(comps: dict, ins: Instr):
    """A fusion instruction -> (its computation, {operand index: parameter name}), or None."""
    callee = re.search(r"calls=%?([\w.\-]+)", ins.rest)
    fused = comps.get(callee[1]) if callee else None
    if fused is None:
        return None
    return fused, {int(re.match(r"\s*(\d+)", p.rest)[1]): p.name
                   for p in fused.instrs if p.opcode == "parameter"}


def _sliced_use_bytes(comps: dict, fused: Computation, value: str):
    """Bytes a fusion reads of `value` (one of its parameters) when it only slices it
    (dynamic-slice: the slice) or updates it in place (dynamic-update-slice: nothing read),
    as scanned layers index their stacked weights and activations, through bitcasts and
    nested fusions; None if it reads it whole."""
    total = 0
    for ins in fused.instrs:
        ops = _operands(ins)
        if value not in ops:
            continue
        if ins.opcode == "dynamic-slice" and ops[0] == value:
            total += hbm_bytes(ins.shape)
        elif ins.opcode == "dynamic-update-slice" and ops[0] == value:
            pass
        elif ins.opcode == "bitcast":
            inner = _sliced_use_bytes(comps, fused, ins.name)
            if inner is None:
                return None
            total += inner
        elif ins.opcode == "fusion" and (nested := _fused_params(comps, ins)):
            for i in (i for i, o in enumerate(ops) if o == value):
                inner = (_sliced_use_bytes(comps, nested[0], nested[1][i])
                         if i in nested[1] else None)
                if inner is None:
                    return None
                total += inner
        else:
            return None
    return total


def _written_bytes(comp: Computation, ins: Instr) -> int:
    """Bytes `ins` writes: an in-place dynamic-update-slice writes its update only."""
    if ins.opcode == "dynamic-update-slice":
        return hbm_bytes(comp.shapes.get(_operands(ins)[1], ""))
    return hbm_bytes(ins.shape)


def instr_bytes(comps: dict, comp: Computation, ins: Instr) -> int:
    """HBM bytes read and written by one unfused instruction (a fusion counts as one kernel:
    its operands and result), in the spirit of XLA's HloCostAnalysis "bytes accessed"."""
    kind = ins.opcode.removesuffix("-start")
    if ins.opcode in NO_HBM_TRAFFIC or kind in COLLECTIVES or ins.opcode.endswith("-done"):
        return 0
    ops = _operands(ins)
    if ins.opcode == "dynamic-slice":
        return 2 * hbm_bytes(ins.shape)
    if ins.opcode == "dynamic-update-slice":
        return 2 * _written_bytes(comp, ins)
    if ins.opcode != "fusion":
        return hbm_bytes(ins.shape) + sum(hbm_bytes(comp.shapes.get(o, "")) for o in ops)
    found = _fused_params(comps, ins)
    if found is None:
        return hbm_bytes(ins.shape) + sum(hbm_bytes(comp.shapes.get(o, "")) for o in ops)
    fused, params = found
    read = 0
    for i, operand in enumerate(ops):
        sliced = _sliced_use_bytes(comps, fused, params[i]) if i in params else None
        read += hbm_bytes(comp.shapes.get(operand, "")) if sliced is None else sliced
    by_name = {x.name: x for x in fused.instrs}
    root = by_name.get(fused.root, fused.instrs[-1])
    outs = ([by_name[o] for o in _operands(root) if o in by_name] if root.opcode == "tuple"
            else [root])
    return read + sum(_written_bytes(fused, x) for x in outs)


@dataclasses.dataclass
class Stats:
    flops: int = 0  # per device, loops multiplied out
    flops_once: int = 0  # every computation counted once (as XLA's cost analysis counts)
    bytes_accessed: int = 0  # HBM bytes read + written, unfused instructions, loops multiplied
    loops: list = dataclasses.field(default_factory=list)
    collectives: list = dataclasses.field(default_factory=list)  # dicts, see `analyze`


def _callees(ins: Instr) -> list:
    """(computation name, kind) called by `ins`; kind 'body' for while bodies."""
    out = []
    for key in ("calls", "body", "true_computation", "false_computation"):
        for m in re.finditer(key + r"=%?([\w.\-]+)", ins.rest):
            out.append((m[1], "body" if key == "body" else "call"))
    m = re.search(r"branch_computations=\{([^}]*)\}", ins.rest)
    if m:
        out += [(b.strip().lstrip("%"), "call") for b in m[1].split(",") if b.strip()]
    return out


def analyze(text: str) -> Stats:
    comps = parse_module(text)
    entry = next(c for c in comps.values() if c.is_entry)
    stats = Stats()

    def visit(comp, weight, loop, depth, seen, fused=False):
        if comp.name in seen:  # a computation calling itself would be malformed HLO
            return
        for ins in comp.instrs:
            if not fused:  # a fusion's inner instructions stay on chip
                stats.bytes_accessed += weight * instr_bytes(comps, comp, ins)
            f = instr_flops(comp, ins)
            stats.flops += weight * f
            stats.flops_once += f
            kind = ins.opcode.removesuffix("-start")
            if kind in COLLECTIVES:
                meta = re.search(r'op_name="([^"]*)"', ins.rest)
                stats.collectives.append(dict(
                    op=kind, bytes=max((DTYPE_BYTES.get(t, 4) * math.prod(d)
                                        for t, d in shape_dims(ins.shape)), default=0),
                    loop=loop.name if loop else None, per_step=weight,
                    from_loss="shard_map" in (meta[1] if meta else "")))
            for callee, how in _callees(ins):
                if callee not in comps:
                    continue
                if how == "body":
                    meta = re.search(r'op_name="([^"]*)"', ins.rest)
                    inner = Loop(ins.name, meta[1] if meta else "", _trip_count(comps, ins),
                                 depth + 1)
                    stats.loops.append(inner)
                    visit(comps[callee], weight * inner.trips, inner, depth + 1,
                          seen | {comp.name})
                else:
                    visit(comps[callee], weight, loop, depth, seen | {comp.name},
                          fused or ins.opcode == "fusion")

    visit(entry, 1, None, 0, frozenset())
    return stats


def collective_summary(stats: Stats) -> dict:
    """{'outside_loops': {op: {count, bytes}}, 'loops': [{name, op_name, direction, trips,
    ops: {op: {count, bytes}} per iteration, layer_ops: the same without the loss's collectives},
    ...], 'bytes_per_step'}. The losses' collectives (shard_map) belong to no layer, but XLA's
    TPU scheduler may move them into a tower's layer loop to overlap them with its compute:
    `layer_ops` leaves them out, so it shows what the layers' sharding costs."""
    def add(table, c, scale=1):
        row = table.setdefault(c["op"], {"count": 0, "bytes": 0})
        row["count"] += scale
        row["bytes"] += scale * c["bytes"]

    outside, per_loop, of_layers = {}, {}, {}
    for c in stats.collectives:
        if c["loop"] is None:
            add(outside, c)
        else:
            add(per_loop.setdefault(c["loop"], {}), c)
            if not c["from_loss"]:
                add(of_layers.setdefault(c["loop"], {}), c)
    loops = [dict(name=lp.name, op_name=lp.op_name, direction=lp.direction, trips=lp.trips,
                  depth=lp.depth, ops=per_loop.get(lp.name, {}),
                  layer_ops=of_layers.get(lp.name, {})) for lp in stats.loops]
    total_bytes = sum(c["bytes"] * c["per_step"] for c in stats.collectives)
    return {"outside_loops": outside, "loops": loops, "bytes_per_step": total_bytes}


