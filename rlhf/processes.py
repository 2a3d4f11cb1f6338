"""The processes of a run, as accelerate started them: data parallel, each process holding the whole model.

Work is sharded by rows, strided: process r of W takes rows r, r+W, r+2W, ... of every list it is handed (prompts
to sample, a batch to train on), so that every minibatch of a batch spreads evenly over the processes; `in_order`
gathers per-row results back into the order one process would have produced. Training losses are weighted by
each process's share of the global batch and the gradients summed across processes before the optimiser step,
so W processes take the step one process would take on the whole batch. Only the main process writes the run
directory. With one process (no launcher) every method is the identity, and nothing here calls accelerate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

LAUNCH_HINT = (
    "start N processes with `accelerate launch --multi_gpu --num_processes N -m rlhf.cli ...` (torchrun; on a "
    "machine without CUDA every process runs on the CPU and talks over gloo) or with `rlhf run --num-processes N`"
)


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = ""  # accelerate's distributed type and backend, e.g. "MULTI_CPU over gloo"; "" for one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list) -> list:
        """This process's rows of `items`: rows rank, rank + W, rank + 2W, ..."""
        return items[self.rank :: self.world_size] if self.parallel else items

    def rows(self, n: int) -> list[int]:
        """The indices of this process's rows among n."""
        return list(range(self.rank, n, self.world_size))

    def in_order(self, local: list, n: int) -> list:
        """Every process's `local` (its rows of n, from `shard`), gathered into the order of the n rows."""
        if not self.parallel:
            assert len(local) == n, (len(local), n)
            return local
        from accelerate.utils import gather_object  # lazy: only launched runs gather

        parts = gather_object([local])
        assert [len(p) for p in parts] == [len(range(r, n, self.world_size)) for r in range(self.world_size)]
        out = [None] * n
        for r, part in enumerate(parts):
            out[r :: self.world_size] = part
        return out

    def map_rows(self, fn, *columns: list) -> list:
        """fn(*columns) (one value per row), each process computing its rows; every process gets all of them."""
        if not self.parallel:
            return list(fn(*columns))
        mine = [self.shard(list(c)) for c in columns]
        return self.in_order(list(fn(*mine)) if mine[0] else [], len(columns[0]))

    def tensor_in_order(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """`in_order` for a tensor whose first dimension is this process's rows; on the CPU."""
        if not self.parallel:
            return local
        return torch.stack(self.in_order(list(local.detach().cpu().unbind(0)), n))

    def sum(self, value: float) -> float:
        """The sum of `value` over the processes."""
        if not self.parallel:
            return value
        from accelerate.utils import reduce  # lazy: only launched runs reduce

        return reduce(torch.tensor([float(value)], dtype=torch.float64, device=self.device), reduction="sum").item()

    def max(self, value: float) -> float:
        if not self.parallel:
            return value
        from accelerate.utils import gather_object  # lazy: only launched runs gather

        return max(gather_object([float(value)]))

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (a missing gradient counts as zeros), in one buffer."""
        if not self.parallel:
            return
        from accelerate.utils import reduce  # lazy: only launched runs reduce

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = reduce(torch.cat([p.grad.reshape(-1).float() for p in params]), reduction="sum")
        start = 0
        for p in params:
            p.grad.copy_(flat[start : start + p.numel()].view_as(p.grad))
            start += p.numel()

    def broadcast(self, obj):
        """The main process's `obj`, on every process."""
        if not self.parallel:
            return obj
        from accelerate.utils import broadcast_object_list  # lazy: only launched runs broadcast

        return broadcast_object_list([obj], from_process=0)[0]

    def wait(self) -> None:
        """Wait until every process gets here."""
        if self.parallel:
            from accelerate import PartialState  # lazy: only launched runs wait

            PartialState().wait_for_everyone()

    @property
    def device(self) -> torch.device:
        """Where collectives take their tensors: the CPU under gloo, this process's GPU under NCCL."""
        from accelerate import PartialState  # lazy: only launched runs use collectives

        state = PartialState()
        return torch.device("cpu") if state.backend in (None, "gloo", "mpi") else state.device


def launched() -> bool:
    """True when a launcher (torchrun, `accelerate launch`, mpirun) started this process as one of several."""
    sizes = [os.environ.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")]
    return any(s is not None and int(s) > 1 for s in sizes)


_CURRENT: Processes | None = None


def current_processes() -> Processes:
    """This run's processes, set up through accelerate on the first call when a launcher started several."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    ):
        raise RuntimeError(
            "this accelerate config asks for FSDP or DeepSpeed; rlhf's stages run data parallel only (every process "
            "holds the whole model, LoRA keeps the trainable part small). Use a config with distributed_type "
            "MULTI_GPU (or MULTI_CPU), or train one process per model"
        )
    if not launched():
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ:
            # `accelerate launch --cpu --num_processes N` with N > 1 without mpirun: accelerate started one process
            raise RuntimeError(
                f"`accelerate launch --cpu` started one process (it needs mpirun for more); {LAUNCH_HINT}"
            )
        _CURRENT = Processes()
        return _CURRENT
    from accelerate import PartialState  # lazy: only launched runs set up a process group

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    launcher = f"{state.distributed_type.value} over {state.backend}"
    _CURRENT = Processes(state.process_index, state.num_processes, state.local_process_index, launcher)
    return _CURRENT
