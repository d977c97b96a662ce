"""A group of one process, and what every group shares: the shard of streams a rank owns, the
batch-size check, and the error other ranks leave to rank 0 to report.

Dimension legend: B streams over all ranks, K ranks.
"""
from __future__ import annotations

from ..errors import UserError


class QuietError(UserError):
    """A UserError that rank 0 reports; the other ranks exit with it silently (one line in all)."""
    quiet = True


def shard(B, K, rank):
    """The contiguous streams (a slice of 0..B-1) rank `rank` of K owns."""
    n = B // K
    return slice(rank * n, (rank + 1) * n)


def check_batch(B, K):
    """UserError unless B streams split evenly over K ranks."""
    if B % K:
        lo, hi = B // K * K, (B // K + 1) * K
        ok = f"{lo} or {hi}" if lo else f"{hi}"
        raise UserError(f"--batch-size {B} does not split over {K} ranks; pass a multiple of {K} "
                        f"(e.g. --batch-size {ok}) or launch a number of ranks that divides {B}")


class Local:
    """A group of one process: every collective is the identity."""
    rank, size, local_rank, local_size = 0, 1, 0, 1
    root = True
    reduce_seconds = 0.0

    def bind(self, backend, shapes, dtype):
        pass

    def share(self, obj):
        return obj

    def reduce_step(self, grads, loss, stop):
        """-> (mean gradients, mean loss, whether any rank asked to stop)."""
        return grads, loss, stop

    def broadcast_params(self, params):
        pass

    def gather_streams(self, state):
        return state

    def members(self):
        return None

    def agree(self, fn):
        return fn()

    def fail(self, exc, step, out):
        raise exc

    def launch_prefix(self):
        return ""
