"""`selm-loop`: the online loop of one base x method x seed (every iteration, resumable).

    selm-loop model=tiny-sft train.alpha=0.01
    selm-loop -m model=tiny-sft,tiny-instruct train.alpha=0,0.01 train.seed=1,2,3   # a grid
"""

import hydra
from omegaconf import DictConfig

from selm.config import CONF_DIR, validate_config


@hydra.main(config_path=str(CONF_DIR), config_name="loop", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    validate_config(cfg)  # a nonsense value fails here, naming its key
    from selm.loop import run_loop

    print(f"run finished: {run_loop(cfg)}")


if __name__ == "__main__":
    main()
