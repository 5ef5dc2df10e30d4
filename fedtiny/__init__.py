"""fedtiny: federated and on-device learning on microcontrollers.

One C trainer (``device_trainer_c/``) serves simulated clients, through the private
extension ``fedtiny._core``, and boards. Start with :mod:`fedtiny.trainer`.

Layers, lowest first. A module imports only from its own layer and the layers listed before
it (``tests/test_layers.py`` checks every import, and that there is no cycle):

1. errors, plugins: named exceptions and what the C statuses mean; resolving a plugin's ``_target_``
   and checking its config against the callable's signature
2. trainer: the C trainer's binding, the model file format, int8 kernels, the update codec
3. config, data, models: the config schemas and their validation, tasks and partitions, backbones
4. budgets: memory (update schemes under an SRAM budget), privacy (accounting), energy
5. client: one device's round behind a backend interface; the run context; the simulated backend
6. devices: links, protocol, bridge, emulated fleet; the board backend
7. server: strategies, aggregation, the recorder, a run on any Flower Grid
8. engine: how a federation runs: the Flower apps, simulation, local Flower deployment
9. cli, report, export, __main__: the ``fedtiny`` command; the federated model out to devices

The config sits with data and models, not with errors: it checks values against the trainer's
compiled bounds (``FT_MAX_*``, through the binding) and the registry of architectures, so each
bound has one source instead of a copy in the schema.
"""

__version__ = "0.1.0"
