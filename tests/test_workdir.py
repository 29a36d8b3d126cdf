"""One run per workdir, and what a resume must match (senet_jax/workdir.py),
in process: the lock and its takeover, the config and class-list checks, the
image folder's checks. The runs of train.py are in test_workdir_runs.py."""

import json
import logging
import os
import socket
import subprocess
import time

import pytest
from PIL import Image

import numpy as np

from senet_jax import workdir as workdir_lib
from senet_jax.errors import UserError


def _holder(path):
    return json.loads((path / workdir_lib.LOCK).read_text())


def _write_lock(path, **fields):
    path.mkdir(parents=True, exist_ok=True)
    record = {'token': 'other', 'host': socket.gethostname(), 'pid': 1,
              'started': '2026-01-01 00:00:00 UTC', 'renewed': time.time(),
              'lease_s': workdir_lib.LEASE_S, **fields}
    # Written aside and renamed into place, as runs write it: a holder's renewal
    # reading a half-written file would take it for a removed lock.
    (path / 'lock.tmp').write_text(json.dumps(record))
    os.replace(path / 'lock.tmp', path / workdir_lib.LOCK)


def _dead_pid():
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_second_run_on_a_held_workdir_stops_naming_the_holder(tmp_path):
    with workdir_lib.WorkdirLock(tmp_path) as lock:
        holder = _holder(tmp_path)
        assert holder['token'] == lock.token and holder['host'] == socket.gethostname()
        with pytest.raises(UserError) as e:
            with workdir_lib.WorkdirLock(tmp_path):
                pass
        message = str(e.value)
        assert f'the workdir {tmp_path} is in use by another run' in message
        assert f'pid {holder["pid"]}' in message and holder['started'] in message
        assert '\n' not in message
        assert _holder(tmp_path)['token'] == lock.token  # the first is untouched
    assert not (tmp_path / workdir_lib.LOCK).exists()  # released at the end
    with workdir_lib.WorkdirLock(tmp_path):  # and free again
        pass


def test_lock_of_a_live_process_on_this_host_is_held(tmp_path):
    _write_lock(tmp_path, pid=subprocess.os.getppid())
    with pytest.raises(UserError, match='in use by another run'):
        workdir_lib.WorkdirLock(tmp_path).__enter__()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    _write_lock(tmp_path, pid=_dead_pid())
    with caplog.at_level(logging.WARNING):
        with workdir_lib.WorkdirLock(tmp_path) as lock:
            assert _holder(tmp_path)['token'] == lock.token
    assert 'taking over the workdir' in caplog.text
    assert 'on this host is gone' in caplog.text


def test_other_host_lock_is_held_until_its_lease_expires(tmp_path, caplog):
    _write_lock(tmp_path, host='elsewhere', renewed=time.time() - 10)
    with pytest.raises(UserError, match=r'host elsewhere, pid 1, .*lease expires in 1[67]\d s'):
        workdir_lib.WorkdirLock(tmp_path).__enter__()
    _write_lock(tmp_path, host='elsewhere',
                renewed=time.time() - workdir_lib.LEASE_S - 1)
    with caplog.at_level(logging.WARNING):
        with workdir_lib.WorkdirLock(tmp_path):
            pass
    assert 'its lease was last renewed' in caplog.text


def test_holder_renews_its_lease_and_notices_a_takeover(tmp_path):
    with workdir_lib.WorkdirLock(tmp_path, renew_s=0.05) as lock:
        first = _holder(tmp_path)['renewed']
        time.sleep(0.3)
        assert _holder(tmp_path)['renewed'] > first
        lock.check()  # still ours
        _write_lock(tmp_path, host='elsewhere', token='thief')
        time.sleep(0.3)
        with pytest.raises(UserError, match='another run .*host elsewhere.* took over'):
            lock.check()
    assert _holder(tmp_path)['token'] == 'thief'  # not removed at the end


# ---------------------------------------------------------------------------
# Resume: the config and the class list.


def _identity(**changes):
    from configs import quickstart
    from senet_jax import trainer
    config = quickstart.get_config()
    num_classes = changes.pop('classes', 10)
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split('.')
        for p in parents:
            target = target[p]
        target[leaf] = value
    return trainer.run_identity(config, num_classes)


@pytest.mark.parametrize('change, key', [
    (dict(image_size=24), 'image_size'),
    (dict(classes=7), 'num_classes'),
    (dict(dataset='fake'), 'dataset'),
    ({'model_overrides.reduction': 8.0}, 'model_overrides.reduction'),
    (dict(learning_rate=0.2), 'learning_rate'),
    (dict(num_epochs=30.0), 'num_epochs'),  # quickstart's cosine decay spans the run
    (dict(min_crop_area=0.5), 'min_crop_area'),
])
def test_resume_refuses_a_change_that_changes_the_run(change, key):
    saved = _identity()
    with pytest.raises(UserError) as e:
        workdir_lib.check_resume(saved, _identity(**change), '/ckpt/run/checkpoints')
    message = str(e.value)
    assert message.startswith('the checkpoints in /ckpt/run/checkpoints belong to '
                              f'a run with {key}=')
    assert f'this config has {key}=' in message and '\n' not in message
    assert 'allow_config_change=True' in message


def test_resume_names_every_changed_key():
    changes = workdir_lib.config_changes(
        _identity(), _identity(image_size=24, learning_rate=0.2, model='resnet_mini'))
    assert changes == [('model', 'se_resnet_mini', 'resnet_mini'), ('image_size', 16, 24),
                       ('learning_rate', 0.1, 0.2)]


@pytest.mark.parametrize('change', [
    dict(eval_every_steps=7), dict(log_every_steps=3), dict(checkpoint_every_steps=9),
    dict(keep_checkpoints=5), dict(dtype='bfloat16'), dict(data_dir='/moved'),
    {'model_overrides.kernels': 'plain'}, dict(skip_nonfinite_steps=True),
])
def test_resume_accepts_what_may_change(change):
    workdir_lib.check_resume(_identity(), _identity(**change), 'dir')


def test_a_longer_run_resumes_unless_the_schedule_spans_it():
    for schedule in ('step', 'constant', 'plateau'):
        workdir_lib.check_resume(_identity(lr_schedule=schedule),
                                 _identity(lr_schedule=schedule, num_train_steps=500), 'd')
    with pytest.raises(UserError, match='num_train_steps=-1, .*num_train_steps=500'):
        workdir_lib.check_resume(_identity(), _identity(num_train_steps=500), 'd')


def test_allow_config_change_resumes_and_logs_the_change(caplog):
    with caplog.at_level(logging.WARNING):
        workdir_lib.check_resume(_identity(), _identity(image_size=24), 'dir',
                                 allow=True)
    assert 'was image_size=16, now image_size=24' in caplog.text


def test_a_config_saved_before_a_field_existed_counts_its_old_value():
    saved = _identity()
    for key in ('optimizer', 'loss', 'bce_target_threshold', 'mixup_alpha', 'cutmix_alpha',
                'repeated_augmentation'):
        del saved['config'][key]
    del saved['config']['model_overrides']['drop_path_rate']
    workdir_lib.check_resume(saved, _identity(), 'dir')   # the defaults: what it computed
    assert workdir_lib.config_changes(saved, _identity(
        mixup_alpha=0.2, optimizer='lamb', repeated_augmentation=2,
        **{'model_overrides.drop_path_rate': 0.1})) == [
        ('mixup_alpha', 0.0, 0.2), ('model_overrides.drop_path_rate', None, 0.1),
        ('optimizer', 'sgd', 'lamb'), ('repeated_augmentation', 0, 2)]


def test_checkpoints_without_a_config_are_checked_on_the_old_fields():
    saved = {k: v for k, v in _identity().items() if k != 'config'}
    workdir_lib.check_resume(saved, _identity(image_size=24), 'dir')  # not recorded then
    with pytest.raises(UserError, match="model='se_resnet_mini'"):
        workdir_lib.check_resume(saved, _identity(model='resnet_mini'), 'dir')


def test_class_list_is_written_and_checked_on_resume(tmp_path, caplog):
    workdir_lib.check_class_list(tmp_path, ['cat', 'dog'], resuming=False)
    assert json.loads((tmp_path / 'classes.json').read_text()) == [
        {'index': 0, 'name': 'cat'}, {'index': 1, 'name': 'dog'}]
    workdir_lib.check_class_list(tmp_path, ['cat', 'dog'], resuming=True)
    with pytest.raises(UserError) as e:  # a folder added in front shifts the labels
        workdir_lib.check_class_list(tmp_path, ['ant', 'cat', 'dog'], resuming=True)
    assert "new ['ant']" in str(e.value) and "at another index ['cat', 'dog']" in str(e.value)
    assert str(tmp_path / 'classes.json') in str(e.value)
    with caplog.at_level(logging.WARNING):
        workdir_lib.check_class_list(tmp_path, ['ant', 'cat', 'dog'], resuming=True,
                                     allow=True)
    assert 'the class list changed' in caplog.text
    assert len(json.loads((tmp_path / 'classes.json').read_text())) == 3
    workdir_lib.check_class_list(tmp_path, None, resuming=True)  # a source without names


# ---------------------------------------------------------------------------
# The image folder, checked before the first step.


def _folder(root, classes=('cat', 'dog'), n=2):
    for split in ('train', 'val'):
        for name in classes:
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f'{i}.png')


def _pipeline(root):
    from configs import quickstart
    from senet_jax import data
    cfg = quickstart.get_config()
    cfg.update(dataset='imagefolder', data_dir=str(root), batch_size=2, image_size=8)
    return data.create_input_pipeline(cfg)


def test_empty_class_folder_in_train_is_an_error(tmp_path):
    _folder(tmp_path)
    (tmp_path / 'train' / 'emu').mkdir()
    (tmp_path / 'train' / 'emu' / 'readme.txt').write_text('no images here')
    with pytest.raises(UserError) as e:
        _pipeline(tmp_path)
    assert f'1 class folder(s) in {tmp_path / "train"} hold no readable images: ' \
           f'{tmp_path / "train" / "emu"}' in str(e.value)


def test_val_class_that_train_lacks_is_an_error(tmp_path):
    _folder(tmp_path)
    _folder(tmp_path / 'extra', classes=('emu',))
    (tmp_path / 'extra' / 'val' / 'emu').rename(tmp_path / 'val' / 'emu')
    with pytest.raises(UserError, match=r"val has classes \['emu'\] that the train split lacks"):
        _pipeline(tmp_path)


def test_non_image_files_are_skipped_and_counted(tmp_path, caplog):
    _folder(tmp_path)
    for name in ('notes.txt', '.DS_Store', 'labels.csv'):
        (tmp_path / 'train' / 'cat' / name).write_text('x')
    with caplog.at_level(logging.WARNING):
        p = _pipeline(tmp_path)
    assert p.num_train_examples == 4 and p.class_names == ['cat', 'dog']
    assert f'skipped 3 file(s) that are not images' in caplog.text
    assert str(tmp_path / 'train') in caplog.text


# ---------------------------------------------------------------------------
# What a user does to the workdir by hand.


def test_read_only_workdir_is_one_sentence_before_anything_runs(tmp_path, monkeypatch):
    from etils import epath

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, 'Permission denied', str(self))
    # (Tests run as root here, for whom chmod does not take write access away.)
    monkeypatch.setattr(type(epath.Path(tmp_path)), 'write_text', refuse)
    with pytest.raises(UserError, match=rf'cannot write to the workdir {tmp_path} '
                                        r'\(\[Errno 13\] Permission denied'):
        workdir_lib.WorkdirLock(tmp_path).__enter__()
    assert not (tmp_path / workdir_lib.LOCK).exists()


def test_hand_deleted_newest_checkpoint_resumes_from_the_one_before(tmp_path):
    import shutil

    import jax
    from senet_jax import checkpoint
    ckpts = checkpoint.Checkpoints(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2, 3):
        ckpts.save(step, {'w': np.full(3, step, np.float32)}, {'model': 'm'})
    ckpts.close()
    shutil.rmtree(tmp_path / 'checkpoints' / '3')  # all of it
    for f in (tmp_path / 'checkpoints' / '2' / 'state').rglob('*'):
        if f.is_file():
            f.unlink()  # part of it
    ckpts = checkpoint.Checkpoints(str(tmp_path), keep=3, async_save=False)
    state, step = ckpts.restore_latest({'w': jax.ShapeDtypeStruct((3,), np.float32)},
                                       {'model': 'm'})
    ckpts.close()
    assert step == 1 and np.all(np.asarray(state['w']) == 1)
    assert [p.name.split('-')[0] for p in (tmp_path / 'corrupt_checkpoints').iterdir()
            if not p.name.endswith('.txt')] == ['2']
