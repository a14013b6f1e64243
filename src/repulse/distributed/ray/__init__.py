"""train_ppo_ray on a Ray cluster: the only code that imports ray. The controller (controller.py) runs the RL loop
of train_ppo and calls the trainer's phases on a policy worker; the reference, critic and reward models live in
their own workers (workers.py), reached through stand-ins (remote.py); placement.py lays them out."""

from __future__ import annotations

from repulse.infra.errors import UserError


def import_ray():
    """The ray module, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise UserError(f"train_ppo_ray needs Ray: pip install 'repulse[ray]' ({err})") from None
    return ray
