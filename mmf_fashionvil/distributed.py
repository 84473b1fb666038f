"""Small torch.distributed helpers shared by the trainer, losses and metrics.

Every function also works without an initialised process group (world size 1),
so single-process code paths need no special cases. rc10's own helpers in
``mmf.utils.distributed`` report rank 0 / world size 1 whenever NCCL is absent
(CPU wheels), which is wrong under gloo; use these instead.
"""
import hashlib
import os

import torch
from torch import distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def init_from_env(device):
    """Initialises the default process group from torchrun's environment
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) when it is not initialised yet
    and WORLD_SIZE > 1: nccl for a CUDA device, gloo otherwise.
    Returns whether a process group is in use."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} not set: start "
            "distributed runs with torchrun"
        )
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def _communication_device():
    # NCCL only moves CUDA tensors; gloo handles CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_row_counts(rows, device):
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(get_world_size())]
    dist.all_gather(counts, torch.tensor([rows], dtype=torch.long, device=device))
    return [int(c.item()) for c in counts]


def _all_gather_rows(tensor, counts):
    """all_gather of tensors whose first dimension differs per rank: pad to the
    largest, gather, cut the padding. Returns the per-rank pieces in rank order."""
    largest = max(counts)
    padded = tensor.new_zeros((largest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded.contiguous())
    return [piece[:count] for piece, count in zip(pieces, counts)]


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenation of every rank's rows. Backward: each rank's input
    receives the sum over ranks of the gradient of its own rows (all_reduce of
    the full gradient, then its slice), i.e. the gradient of sum_r L_r.

    Written here rather than using torch.distributed.nn.functional.all_gather
    because that is deprecated, needs equal shapes, and emulates reduce-scatter
    with all_to_all under gloo."""

    @staticmethod
    def forward(ctx, tensor):
        counts = _gather_row_counts(tensor.shape[0], tensor.device)
        rank = get_rank()
        ctx.start = sum(counts[:rank])
        ctx.rows = counts[rank]
        return torch.cat(_all_gather_rows(tensor, counts), dim=0)

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.rows]


def all_gather_with_grad(tensor):
    """Rows of ``tensor`` from every rank concatenated along dim 0 in rank order;
    gradients flow back to each rank's input. Row counts may differ per rank
    (evaluation shards); the other dimensions must match. World size 1: ``tensor``."""
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def gather_variable(tensors):
    """Gathers a dict of tensors (same keys on every rank, first dimension may
    differ per rank and per key) to every rank: each key becomes the
    concatenation over ranks in rank order, on the CPU, without gradient."""
    if get_world_size() == 1:
        return {key: value.detach().cpu() for key, value in tensors.items()}
    keys = sorted(tensors)
    all_keys = gather_objects(keys)
    if any(k != keys for k in all_keys):
        raise ValueError(f"gather_variable: ranks hold different keys: {all_keys}")
    device = _communication_device()
    gathered = {}
    with torch.no_grad():
        for key in keys:
            value = tensors[key].detach().to(device)
            counts = _gather_row_counts(value.shape[0], device)
            gathered[key] = torch.cat(_all_gather_rows(value, counts), dim=0).cpu()
    return gathered


def gather_objects(obj):
    """List of ``obj`` from every rank (picklable objects), in rank order."""
    if get_world_size() == 1:
        return [obj]
    objects = [None] * get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_object(obj, src=0):
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier():
    if get_world_size() > 1:
        dist.barrier()


def ranks_with_other_parameters(model):
    """The ranks whose parameters differ from rank 0's (a collective; [] when all agree).
    DDP keeps them bit-identical; anything else is a bug (e.g. a rank that skipped a
    gradient all-reduce). Buffers are left out: BatchNorm statistics of the last forward are
    each rank's own (DDP re-broadcasts rank 0's at the next forward, and rank 0 saves them)."""
    digest = hashlib.sha256()
    for name, value in model.named_parameters():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digests = gather_objects(digest.hexdigest())
    return [rank for rank, d in enumerate(digests) if d != digests[0]]
