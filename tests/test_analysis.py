"""senet_jax.analysis: gate statistics, class specificity, plots and SE-guided pruning."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference_weights import random_variables, shallowest
from senet_jax import analysis
from senet_jax.models import create_model

# Most of these train se_resnet_mini on digits or evaluate it on the whole test
# split: compiled with XLA's optimizations, the file takes less CPU (80.6 s against
# 89.5 s at level 0, `pytest -p no:cacheprovider tests/test_analysis.py`).
pytestmark = pytest.mark.optimized

NUM_CLASSES = 10
IMAGE_SIZE = 16


@pytest.fixture(scope='module')
def digits():
    train = analysis.digits_data(IMAGE_SIZE, 'train')
    test = analysis.digits_data(IMAGE_SIZE, 'test')
    return train, test


@pytest.fixture(scope='module')
def trained(digits):
    """se_resnet_mini after a few dozen SGD steps on the digits training split."""
    model = create_model('se_resnet_mini', num_classes=NUM_CLASSES)
    variables = analysis.train_small(model, *digits[0], steps=40, seed=0)
    return model, variables


def _captured(model, variables, images):
    """Every submodule's output, by path (flax capture_intermediates)."""
    apply = jax.jit(lambda v, x: model.apply(v, analysis.prepare(x, model),
                                             capture_intermediates=True, mutable=['intermediates']))
    return apply(variables, jnp.asarray(images))[1]['intermediates']


def test_digits_match_the_training_pipeline():
    from senet_jax.data import load_digits_split
    tr_x, tr_y, te_x, te_y = load_digits_split(IMAGE_SIZE)
    x, y = analysis.digits_data(IMAGE_SIZE, 'test')
    np.testing.assert_array_equal(y, te_y)
    assert x.dtype == np.uint8 and x.shape == te_x.shape == (360, 16, 16, 3)
    np.testing.assert_array_equal(x, te_x)
    np.testing.assert_array_equal(analysis.digits_data(IMAGE_SIZE, 'train')[1], tr_y)


@pytest.mark.slow
def test_training_learns(trained, digits):
    model, variables = trained
    assert analysis.accuracy(model, variables, digits[1]) > 0.5  # chance is 0.1


@pytest.mark.slow
def test_gates_equal_a_manual_excitation(trained, digits):
    model, variables = trained
    images = digits[1][0][:7]
    _, gates = analysis.gates_and_logits(model, variables, images)
    assert list(gates) == analysis.se_blocks(variables) == [
        'stage2_block0', 'stage3_block0', 'stage4_block0', 'stage5_block0']
    for block, channels in zip(gates, (16, 32, 64, 128)):
        assert gates[block].shape == (7, channels)
    # stage4_block0 (basic block, standard position): s = sigmoid(W2 relu(W1 mean(U))),
    # with U the output of the branch's last BN, which the fused block hands over
    # as BN(x) = x * a + b.
    captured = _captured(model, variables, images)['stage4_block0']
    a, b, _ = captured['bn2']['__call__'][0]
    u = np.asarray(captured['conv2']['__call__'][0]) * np.asarray(a) + np.asarray(b)
    se = variables['params']['stage4_block0']['se']
    z = u.mean(axis=(1, 2))
    h = np.maximum(z @ np.asarray(se['fc1']['kernel']) + np.asarray(se['fc1']['bias']), 0)
    s = 1 / (1 + np.exp(-(h @ np.asarray(se['fc2']['kernel']) + np.asarray(se['fc2']['bias']))))
    np.testing.assert_allclose(np.asarray(gates['stage4_block0']), s, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_class_means_equal_a_direct_computation(trained, digits):
    model, variables = trained
    x, y = digits[1][0][:130], digits[1][1][:130]
    # 130 rows in batches of 48: the last batch is padded, padding must not count.
    stats = analysis.collect_gate_stats(model, variables, (x, y), NUM_CLASSES, batch_size=48)
    _, gates = analysis.gates_and_logits(model, variables, x)
    for b in stats.blocks:
        g = np.asarray(gates[b], np.float64)
        assert stats.class_mean[b].shape == (NUM_CLASSES, g.shape[1])
        for k in range(NUM_CLASSES):
            np.testing.assert_allclose(stats.class_mean[b][k], g[y == k].mean(0), rtol=1e-4)
        np.testing.assert_allclose(stats.mean[b], g.mean(0), rtol=1e-4)
        np.testing.assert_allclose(stats.var[b], g.var(0), rtol=1e-3, atol=1e-7)
    np.testing.assert_array_equal(stats.counts, np.bincount(y, minlength=NUM_CLASSES))
    assert stats.accuracy == pytest.approx(analysis.accuracy(model, variables, (x, y)))
    # The trainer's eval batches (dicts with a mask) give the same statistics.
    mask = np.ones(130, np.float32)
    mask[100:] = 0
    batches = [{'image': x[:64], 'label': y[:64], 'mask': mask[:64]},
               {'image': x[64:], 'label': y[64:], 'mask': mask[64:]}]
    masked = analysis.collect_gate_stats(model, variables, iter(batches), NUM_CLASSES, 32)
    direct = analysis.collect_gate_stats(model, variables, (x[:100], y[:100]), NUM_CLASSES)
    np.testing.assert_allclose(masked.mean['stage5_block0'], direct.mean['stage5_block0'],
                               rtol=1e-5)


@pytest.mark.slow
def test_no_squeeze_gates_are_averaged_over_space(digits):
    model = create_model('se_resnet_mini', num_classes=NUM_CLASSES, squeeze='none')
    x = digits[1][0][:4]
    variables = random_variables(model, analysis.prepare(jnp.asarray(x), model))
    _, gates = analysis.gates_and_logits(model, variables, x)
    apply = jax.jit(lambda v, x: model.apply(v, analysis.prepare(x, model), mutable=['intermediates']))
    spatial = apply(variables, jnp.asarray(x))[1]['intermediates']['stage3_block0']['se']['gate'][0]
    assert spatial.shape == (4, 8, 8, 32) and gates['stage3_block0'].shape == (4, 32)
    np.testing.assert_allclose(gates['stage3_block0'], spatial.mean((1, 2)), rtol=1e-5)


def _stats(class_mean, var):
    k, c = class_mean.shape
    counts = np.full(k, 10.0)
    return analysis.GateStats(['b'], {'b': class_mean}, {'b': class_mean.mean(0)},
                              {'b': var}, counts, 1.0)


def test_class_specificity_measures():
    rng = np.random.default_rng(0)
    same = np.tile(rng.random(8), (5, 1))
    assert analysis.class_specificity(_stats(same, np.full(8, 0.01)))['b'] == 0
    assert analysis.class_specificity(_stats(same, np.full(8, 0.01)), 'distance')['b'] == 0
    # Gates fixed by the class: the total variance is the between-class variance.
    by_class = rng.random((5, 8))
    eta2 = analysis.class_specificity(_stats(by_class, by_class.var(0)))['b']
    assert eta2 == pytest.approx(1.0)
    # Half of the variance within classes.
    assert analysis.class_specificity(_stats(by_class, 2 * by_class.var(0)))['b'] == \
        pytest.approx(0.5)
    with pytest.raises(ValueError, match='measure'):
        analysis.class_specificity(_stats(same, np.ones(8)), 'entropy')


@pytest.mark.slow
def test_plot_writes_a_png(trained, digits, tmp_path):
    model, variables = trained
    stats = analysis.collect_gate_stats(model, variables, digits[1], NUM_CLASSES)
    path = tmp_path / 'gates.png'
    fig = analysis.plot_gate_curves(stats, str(path), classes=[0, 3, 7])
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000
    assert len(fig.axes) == 4
    assert len(fig.axes[0].lines) == 4  # three classes and 'all'
    np.testing.assert_allclose(fig.axes[3].lines[1].get_ydata(),
                               stats.class_mean['stage5_block0'][3])


def test_plot_picks_the_papers_blocks_for_resnet50_layouts(tmp_path):
    depths = {2: 3, 3: 4, 4: 6, 5: 3}
    blocks = [f'stage{s}_block{b}' for s, n in depths.items() for b in range(n)]
    rng = np.random.default_rng(0)
    means = {b: rng.random((3, 8)) for b in blocks}
    stats = analysis.GateStats(blocks, means, {b: m.mean(0) for b, m in means.items()},
                               {b: np.full(8, 0.1) for b in blocks}, np.full(3, 5.0), 1.0)
    fig = analysis.plot_gate_curves(stats)
    assert [ax.get_title().split()[0] for ax in fig.axes] == list(analysis.FIG6_BLOCKS)
    # Other layouts: every block, at most 8 spread over the depth.
    others = [b for b in blocks if b != 'stage2_block2']
    fig = analysis.plot_gate_curves(dataclasses.replace(stats, blocks=others))
    titles = [ax.get_title().split()[0] for ax in fig.axes]
    assert len(titles) == 8 and titles[0] == others[0] and titles[-1] == others[-1]


@pytest.mark.slow
def test_pruning_zeroes_exactly_the_chosen_channels(trained, digits):
    model, variables = trained
    chosen = {'stage3_block0': np.array([1, 5, 30]), 'stage5_block0': np.array([0])}
    pruned = analysis.prune_channels(model, variables, chosen)
    for b in analysis.se_blocks(variables):
        for k in ('scale', 'bias'):
            before = np.asarray(variables['params'][b]['bn2'][k])
            after = np.asarray(pruned['params'][b]['bn2'][k])
            expected = before.copy()
            expected[chosen.get(b, [])] = 0
            np.testing.assert_array_equal(after, expected)
        # Nothing else changes.
        for name in variables['params'][b]:
            if name != 'bn2':
                jax.tree.map(np.testing.assert_array_equal, variables['params'][b][name],
                             pruned['params'][b][name])
    # The pruned channels' branch output (the SE block's output, BN(x) * s) is zero.
    captured = _captured(model, pruned, digits[1][0][:5])['stage3_block0']
    a, b, _ = (np.asarray(v) for v in captured['bn2']['__call__'][0])
    gates = np.asarray(captured['se']['__call__'][0])[:, None, None, :]
    se_out = (np.asarray(captured['conv2']['__call__'][0]) * a + b) * gates
    assert np.all(se_out[..., [1, 5, 30]] == 0)
    assert np.all(np.abs(se_out[..., [0, 2, 3]]).max(axis=(0, 1, 2)) > 0)


@pytest.mark.slow
def test_channel_ranking(trained, digits):
    model, variables = trained
    stats = analysis.collect_gate_stats(model, variables, digits[0], NUM_CLASSES)
    l1 = analysis.channel_scores(model, variables, 'l1_weight')
    kernel = np.asarray(variables['params']['stage2_block0']['conv2']['kernel'])
    np.testing.assert_allclose(l1['stage2_block0'], np.abs(kernel).sum((0, 1, 2)), rtol=1e-6)
    gate = analysis.channel_scores(model, variables, 'se_gate', stats)
    chosen = analysis.channels_to_prune(gate, 0.25)
    for b, idx in chosen.items():
        assert len(idx) == round(0.25 * len(gate[b]))
        assert gate[b][idx].max() <= np.delete(gate[b], idx).min()
    assert all(len(i) == 0 for i in analysis.channels_to_prune(gate, 0.0).values())
    with pytest.raises(ValueError, match='fraction'):
        analysis.channels_to_prune(gate, 1.5)


@pytest.mark.slow
def test_pruning_table(trained, digits):
    model, variables = trained
    baseline = analysis.accuracy(model, variables, digits[1])
    rows = analysis.pruning_table(model, variables, digits[1], NUM_CLASSES,
                                  fractions=(0.0, 0.5, 1.0))
    assert [r['fraction'] for r in rows] == [0.0, 0.5, 1.0]
    assert [r['pruned'] for r in rows] == [0, 120, 240]
    for c in analysis.CRITERIA:
        assert rows[0][c] == baseline
        assert rows[2][c] == rows[2]['se_gate']  # all pruned: the criterion is moot
    assert rows[1]['se_gate'] != baseline
    text = analysis.format_pruning_table(rows)
    assert 'se_gate' in text and 'l1_weight' in text and len(text.splitlines()) == 4


def test_pruning_needs_a_gated_norm():
    model = create_model('se_resnet_mini', num_classes=NUM_CLASSES, se_position='post')
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    with pytest.raises(ValueError, match='standard'):
        analysis.channel_scores(model, variables, 'l1_weight')
    sk = create_model('se_resnet_mini', num_classes=NUM_CLASSES, se_position='3x3', selective_kernel={})
    with pytest.raises(ValueError, match='Selective Kernel conv splits'):
        analysis.gated_norm(sk, {'bn2': {}})


@pytest.mark.slow
def test_command_line(capsys, tmp_path):
    png = tmp_path / 'g.png'
    assert analysis.main(['--steps', '10', '--fractions', '0,0.5', '--png', str(png)]) == 0
    out = capsys.readouterr().out
    assert 'held-out top-1' in out and 'stage5_block0' in out and 'eta^2' in out
    table = out.split('Held-out top-1 after pruning')[1].split('\n\n')[0]
    assert len(table.strip().splitlines()) == 4  # title, header, 0% and 50%
    assert png.stat().st_size > 0


@pytest.mark.no_cover   # every line it runs, cheaper tests run too (docs/architecture.md, "Tests")
@pytest.mark.slow
def test_load_workdir_matches_the_trainers_evaluation(tmp_path):
    """A train.py run, loaded back: same architecture, and the trainer's held-out top-1."""
    from configs import quickstart
    from senet_jax.trainer import train_and_evaluate

    config = quickstart.get_config()
    config.num_train_steps, config.eval_every_steps = 8, 8
    config.checkpoint_every_steps = 8
    result = train_and_evaluate(config, str(tmp_path))
    model, variables, meta = analysis.load_workdir(str(tmp_path))
    assert meta['model'] == 'se_resnet_mini' and model.num_classes == 10
    assert analysis.se_blocks(variables) == ['stage2_block0', 'stage3_block0',
                                             'stage4_block0', 'stage5_block0']
    test = analysis.digits_data(meta['image_size'], 'test')
    assert analysis.accuracy(model, variables, test) == pytest.approx(result['eval_top1'],
                                                                      abs=1.5 / 360)


@pytest.mark.slow
@pytest.mark.parametrize('name,size,first,last,count', [
    ('se_bn_inception', 32, 'inception_3a', 'inception_5b', 10),
    ('se_vgg16_bn', 32, 'se1_1', 'se5_3', 13),
    ('se_inception_resnet_v2', 75, 'block35_0', 'block8', 4),
])
def test_gate_statistics_of_every_family_in_depth_order(name, size, first, last, count):
    # Call order, not name order: Inception-ResNet's block35 units come before block17
    # and block8, which a sort of the names would reverse (one unit of each kind
    # here: the order is the claim, not the depth).
    model = create_model(name, num_classes=3, **shallowest(name))
    variables = random_variables(model, jnp.zeros((1, size, size, 3)))
    blocks = analysis.se_blocks(variables, model)
    assert (len(blocks), blocks[0], blocks[-1]) == (count, first, last)
    images = np.random.default_rng(0).integers(0, 256, (6, size, size, 3)).astype(np.uint8)
    stats = analysis.collect_gate_stats(model, variables, (images, np.arange(6) % 3),
                                        num_classes=3, batch_size=6)
    assert stats.blocks == blocks
    assert all(np.isfinite(stats.mean[b]).all() and 0 < stats.mean[b].min() for b in blocks)
    assert set(analysis.class_specificity(stats)) == set(blocks)
