"""The parts of lstm_engine.parallel that need no MPI: who counts as launched, the shards, the
batch-size message, and the group of one (run where mpi4py is absent too)."""
from __future__ import annotations

import numpy as np
import pytest

from lstm_engine import parallel
from lstm_engine.errors import UserError


@pytest.mark.parametrize("environ, size", [({}, 1), ({"PMI_SIZE": "3"}, 3), ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),
                                           ({"PMI_SIZE": "1"}, 1), ({"PMI_SIZE": ""}, 1), ({"SLURM_NTASKS": "4"}, 1)])
def test_launched_size_reads_the_launchers_variables(environ, size):
    assert parallel.launched_size(environ) == size


@pytest.mark.parametrize("B, K", [(6, 2), (6, 3), (12, 4), (5, 5), (4, 1)])
def test_shards_cover_every_stream_once_in_order(B, K):
    owned = np.concatenate([np.arange(B)[parallel.shard(B, K, r)] for r in range(K)])
    assert owned.tolist() == list(range(B))


@pytest.mark.parametrize("B, K, sizes", [(4, 3, "3 or 6"), (2, 3, "3"), (10, 4, "8 or 12")])
def test_a_batch_that_does_not_split_names_sizes_that_do(B, K, sizes):
    with pytest.raises(UserError) as e:
        parallel.check_batch(B, K)
    msg = str(e.value)
    assert "\n" not in msg and f"--batch-size {B} does not split over {K} ranks" in msg
    assert f"--batch-size {sizes})" in msg
    parallel.check_batch(B // K * K or K, K)          # a multiple passes


def test_the_group_of_one_changes_nothing():
    one = parallel.Local()
    grads = {"W": np.ones((2, 3))}
    assert one.reduce_step(grads, 1.5, False) == (grads, 1.5, False)
    assert one.reduce_step(grads, 1.5, True)[2] is True
    assert one.agree(lambda: 7) == 7 and one.share("x") == "x" and one.members() is None
    state = [[np.zeros((2, 3)), np.ones((2, 3))]]
    assert one.gather_streams(state) is state
    with pytest.raises(ValueError):
        one.fail(ValueError("boom"), 0, "out")        # one process: the error propagates as it is
