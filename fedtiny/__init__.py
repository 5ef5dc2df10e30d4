"""fedtiny: federated and on-device learning on microcontrollers.

One C trainer (``device_trainer_c/``) serves simulated clients, through the private
extension ``fedtiny._core``, and boards. Start with :mod:`fedtiny.trainer`.
"""

__version__ = "0.1.0"
