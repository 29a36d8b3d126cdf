"""train.py's cluster detection: what makes it call jax.distributed.initialize()."""

from jax._src import hardware_utils

import train


def test_a_tpu_chip_means_a_tpu_vm_and_a_google_nic_alone_does_not(monkeypatch):
    monkeypatch.setattr(hardware_utils, 'num_available_tpu_chips_and_device_id',
                        lambda: (4, hardware_utils.TpuVersion.v4))
    assert train._tpu_attached()
    # A GCE GPU VM: Google's vendor id on its gVNIC, no TPU device id.
    monkeypatch.setattr(hardware_utils, 'num_available_tpu_chips_and_device_id',
                        lambda: (0, None))
    assert not train._tpu_attached()
    monkeypatch.delenv('SLURM_JOB_ID', raising=False)
    monkeypatch.delenv('OMPI_MCA_orte_hnp_uri', raising=False)
    monkeypatch.delenv('TPU_WORKER_HOSTNAMES', raising=False)
    monkeypatch.delenv('TPU_PROCESS_ADDRESSES', raising=False)
    assert not train._cluster_detected()
