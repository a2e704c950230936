"""The SLURM files: slurm/train.sbatch submits one run; hydra/launcher=slurm submits a multirun's jobs through
hydra-submitit-launcher, sized from the trainer config."""

from conftest import CONFIG_DIR, compose_train
from omegaconf import OmegaConf


def test_the_slurm_launcher_config_takes_its_sizes_from_the_trainer():
    """hydra/launcher=slurm extends hydra-submitit-launcher's submitit_slurm (an optional plugin, not needed here):
    one SLURM task per device, on trainer.num_nodes nodes."""
    launcher = OmegaConf.load(CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml")
    assert list(launcher.defaults) == ["submitit_slurm"]
    settings = {
        key: value
        for key, value in OmegaConf.to_container(launcher).items()  # not resolved yet
        if key not in ("defaults", "submitit_folder")
    }
    cfg = compose_train(["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=3"])
    OmegaConf.set_struct(cfg, False)  # compose() returns a struct config: no new keys without this
    cfg = OmegaConf.merge(cfg, {"launcher": settings})
    assert (cfg.launcher.nodes, cfg.launcher.tasks_per_node, cfg.launcher.gpus_per_node) == (3, 4, 4)
