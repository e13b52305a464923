"""The mesh and the logical-axis rules table."""
import flax.linen as nn
import jax
import pytest

from t5x_like.training import partitioning
from tests.training_fixtures import tiny_model


def test_mesh_shape_minus_one_fills_remaining_devices():
    assert partitioning.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    assert partitioning.resolve_mesh_shape((1, 1, -1), 4) == (1, 1, 4)
    with pytest.raises(ValueError):
        partitioning.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError):
        partitioning.resolve_mesh_shape((2, 2, 1), 8)


def test_rules_table_covers_every_parameter_axis_of_every_layout():
    rules = dict(partitioning.logical_axis_rules())
    for layout, depth in (("decoder_only", (0, 2)), ("encoder_decoder", (2, 2)), ("encoder_only", (2, 0))):
        model = tiny_model(layout=layout, num_encoder_layers=depth[0], num_decoder_layers=depth[1])
        boxed = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), m.dummy_batch(2, {"inputs": 8, "targets": 8})))
        names = {n for spec in jax.tree.leaves(nn.get_partition_spec(boxed)) for n in spec if n}
        assert names <= set(rules), f"{layout}: axes without a rule: {names - set(rules)}"


def test_axis_that_does_not_divide_a_dimension_is_left_unsharded():
    mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    spec = partitioning._fit_spec(jax.sharding.PartitionSpec("tensor", ("data", "fsdp")), (6, 8), mesh)
    assert spec == jax.sharding.PartitionSpec("tensor", ("data", "fsdp"))  # size-1 axes always divide
