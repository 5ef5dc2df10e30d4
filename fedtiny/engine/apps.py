"""fedtiny's Flower apps: the ClientApp and ServerApp every engine runs.

* :data:`client_app` and :data:`server_app` are what ``flwr run .`` loads
  (``[tool.flwr.app.components]`` in pyproject.toml). Both compose the experiment's config from
  the run config's ``overrides`` (space-separated Hydra overrides); the ServerApp writes its
  results under ``output-dir``. Flower ships the run config to every node once per run, so a
  message carries only the run's id and the round's settings.
* :func:`make_client_app` and :func:`make_server_app` build the same apps bound to one run, for
  the simulation engine (:mod:`fedtiny.engine.simulation`).

The ClientApp is where the layers meet: the client's round (:mod:`fedtiny.client.round`) gets
the run's context and, for a node that holds a board, the board backend of
:mod:`fedtiny.devices`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedtiny.client import round as device_round
from fedtiny.client.context import RunContext, config_json, run_context
from fedtiny.devices.backend import BoardBackend
from fedtiny.server.prepare import prepare_output
from fedtiny.server.run import run_server


def make_client_app(resolve: Callable[[Context], RunContext]) -> ClientApp:
    """A ClientApp whose node finds its run's context with `resolve(node context)`."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return device_round.query(msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return device_round.train(msg, context, resolve(context), BoardBackend)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return device_round.evaluate(msg, context, resolve(context))

    return app


def simulation_client_app(cfg_json: str) -> ClientApp:
    """The ClientApp of one simulated run: each worker process builds the run's context once."""
    return make_client_app(lambda _node: run_context(cfg_json))


def make_server_app(run: RunContext, out_dir: Path, outcome: dict, engine: dict | None = None, resume=None,
                    counters=None, log=print) -> ServerApp:
    """A ServerApp bound to one prepared run; `outcome` receives the summary or the error, and
    the summary records `engine` (backend, workers) and `counters()` (restarts, reconnects).
    With `resume` (a checkpoint) the run continues after its round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["summary"] = run_server(grid, run, out_dir, engine, resume, counters, log)
        except BaseException as err:  # reported by the runner after the simulation stops
            outcome["error"] = err
            raise

    return app


_COMPOSED: dict[str, str] = {}  # overrides -> config JSON (composing takes Hydra ~0.1 s)


def _config_from_run(context: Context) -> str:
    from fedtiny.config import compose, split_config_dirs

    overrides = str(context.run_config.get("overrides", ""))
    if overrides not in _COMPOSED:
        dirs, rest = split_config_dirs(overrides.split())  # --config-dir DIR works in the overrides too
        _COMPOSED[overrides] = config_json(compose(rest, dirs))
    return _COMPOSED[overrides]


client_app = make_client_app(lambda node: run_context(_config_from_run(node)))
server_app = ServerApp()


@server_app.main()
def flwr_main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: compose the config from the run config's overrides."""
    from fedtiny.config import compose, split_config_dirs

    dirs, rest = split_config_dirs(str(context.run_config.get("overrides", "")).split())
    cfg = compose(rest, dirs)
    out_dir = Path(str(context.run_config.get("output-dir", "outputs/flwr-run"))) / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_server(grid, prepare_output(cfg, out_dir), out_dir, {"backend": "flower"})
