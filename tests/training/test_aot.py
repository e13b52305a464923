"""Compiling the real train step for a TPU slice on this CPU host (training/aot.py, `t5x-like compile`)."""
import dataclasses

import jax
import pytest

pytest.importorskip("libtpu")  # the TPU compiler; a test dependency (setup.py's test extra)

from t5x_like.cli import gin_loading  # noqa: E402
from t5x_like.model import sizing  # noqa: E402
from t5x_like.model.model import Model  # noqa: E402
from t5x_like.training import aot, partitioning, run  # noqa: E402

LAYOUTS = ("decoder_only", "prefix_lm", "encoder_decoder")
LENGTHS = {"inputs": 32, "targets": 32}


def tiny_train_config(layout: str, **overrides) -> run.TrainConfig:
    config = gin_loading.model_config_from_file(f"gin_configs/models/{layout}/tiny.gin", [])
    return run.TrainConfig(model=Model(config), task_feature_lengths=dict(LENGTHS), batch_size=8, **overrides)


class _Reports(dict):
    """One compile per layout on v5e:2x2 (4 chips), made when first asked for; train step only,
    the decoder-only one with its eval step."""

    def __missing__(self, layout: str):
        self[layout] = aot.compile_train_step(tiny_train_config(layout), "v5e:2x2",
                                              eval_step=layout == "decoder_only")
        return self[layout]


@pytest.fixture(scope="module")
def reports():
    return _Reports()


# Compiling takes seconds per layout: the full suite (CI) compiles every layout; the fast loop keeps the
# tests below that compile nothing.
@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_step_compiles_for_v5e_with_flops_near_the_sizing_estimate(reports, layout):
    report = reports[layout]
    assert report.num_chips == 4 and report.mesh_shape == (4, 1, 1)
    assert 0 < report.total_bytes < report.hbm_bytes == 16 * aot.GiB and report.fits
    assert report.params_bytes == 4 * report.params  # float32, replicated over the data axis
    assert report.argument_bytes >= report.params_bytes + report.opt_state_bytes
    config = tiny_train_config(layout)
    expected = 8 * sizing.train_flops_per_example(config.model.config, 32, 32) / 4
    assert report.model_flops_per_chip == pytest.approx(expected)
    assert 0.5 < report.xla_flops_per_chip / expected < 2.0
    assert report.step_seconds(0.5) == pytest.approx(2 * report.step_seconds(1.0))
    assert report.mfu(report.step_seconds(0.4)) == pytest.approx(0.4)


@pytest.mark.slow
def test_eval_step_is_compiled_too(reports):
    report = reports["decoder_only"]
    assert 0 < report.eval_total_bytes < report.total_bytes  # no optimizer state, no gradients
    assert "eval step total" in report.table() and "step time at 50% MFU" in report.table(measured_step_seconds=2.0)


def test_fsdp_mesh_shards_parameters_over_the_slice():
    config = tiny_train_config("decoder_only", mesh_shape=(1, -1, 1))
    mesh = aot.topology_mesh(aot.resolve_slice("v5e-4"), config.mesh_shape)
    trainer = run.build_trainer(config, mesh)
    assert mesh.devices.shape == (1, 4, 1)
    per_chip = aot._per_chip_bytes(trainer.abstract_params)
    assert per_chip < 0.3 * 4 * sizing.count_params(config.model.config).total  # about a quarter each


def test_named_slices_and_raw_topologies():
    assert aot.resolve_slice("v5p-128").num_chips == 64 and aot.resolve_slice("v5p-128").hbm_bytes == 95 * aot.GiB
    assert aot.resolve_slice("v4-32").topology == "v4:2x2x4" and aot.resolve_slice("v5e-64").num_chips == 64
    assert aot.resolve_slice("v5e:2x2") == dataclasses.replace(aot.SLICES["v5e-4"], name="v5e:2x2")
    assert aot.resolve_slice("v6e:4x8").peak_flops == 918e12
    with pytest.raises(aot.UnknownSliceError, match="v5p-128"):
        aot.resolve_slice("v9-8")


def test_xla_out_of_memory_message_is_parsed():
    needed, available, what = aot.parse_hbm_shortfall(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(27.53G) exceeds available HBM (15.75G).")
    assert (needed / aot.GiB, available / aot.GiB, what) == (pytest.approx(27.53), pytest.approx(15.75),
                                                              "HLO temporaries")
    assert aot.parse_hbm_shortfall("Used 30.5G of 15.75G hbm. Exceeded hbm capacity by 14.75G.")[0] == 30.5 * aot.GiB


def test_trainer_abstract_arguments_match_the_batch_and_state():
    config = tiny_train_config("encoder_decoder")
    trainer = run.build_trainer(config, partitioning.make_mesh((-1, 1, 1)))
    batch = trainer.abstract_batch()
    assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in trainer.dummy_batch.items()}
    assert trainer.abstract_state().params is trainer.abstract_params


# -- seeds stacked in one program (`t5x-like compile --stack_seeds`) ----------------------------------------
def test_stacked_seeds_are_split_over_the_data_axis_of_the_slice():
    """2 seeds on a data axis of 4 chips: 2 groups of 2; each seed's batch over its group's 2 chips."""
    config = tiny_train_config("decoder_only")
    mesh = partitioning.stacked_mesh(aot.topology_mesh(aot.resolve_slice("v5e-4"), config.mesh_shape), 2)
    assert dict(mesh.shape) == {"seeds": 2, "data": 2, "fsdp": 1, "tensor": 1}
    state, batch = run.build_trainer(config, mesh).abstract_stacked_arguments(2)
    for x in jax.tree.leaves(state):
        assert x.shape[0] == 2 and x.sharding.shard_shape(x.shape)[0] == 1
    assert {x.sharding.shard_shape(x.shape)[:2] for x in batch.values()} == {(1, 4)}  # of (2 seeds, 8 rows)


@pytest.mark.slow  # four compiles
def test_stacked_compile_holds_s_times_the_lone_arguments_on_one_chip_and_about_the_lone_with_a_seed_per_chip(reports):
    lone = {"v5e-1": aot.compile_train_step(tiny_train_config("decoder_only"), "v5e-1", eval_step=False),
            "v5e-4": reports["decoder_only"]}  # mesh (4, 1, 1)
    two_on_one = aot.compile_train_step(tiny_train_config("decoder_only"), "v5e-1", eval_step=False, stack_seeds=2)
    four_on_four = aot.compile_train_step(tiny_train_config("decoder_only"), "v5e-4", eval_step=False,
                                          stack_seeds=4)
    assert two_on_one.params_bytes == 2 * lone["v5e-1"].params_bytes
    assert two_on_one.argument_bytes == pytest.approx(2 * lone["v5e-1"].argument_bytes, rel=0.02)
    assert four_on_four.params_bytes == lone["v5e-4"].params_bytes  # one seed's parameters per chip
    # ... and its whole batch, where the lone run holds a quarter of it
    assert four_on_four.argument_bytes == pytest.approx(lone["v5e-4"].argument_bytes, rel=0.05)
    assert four_on_four.model_flops_per_chip == pytest.approx(4 * lone["v5e-4"].model_flops_per_chip)
    assert "4 seeds stacked in one program, over 4 device group(s)" in four_on_four.table()
