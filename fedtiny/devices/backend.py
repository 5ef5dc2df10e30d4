"""The board backend (:class:`BoardBackend`, a :class:`fedtiny.client.backend.Backend`): a
device's training round run on a real or emulated board.

The ClientApp reaches the board through its bridge (``fedtiny board serve``, one long-lived
process per board that owns the serial link), so each Flower message opens only a local TCP
connection; the board itself is never reset by it. A round:

1. HELLO; LOAD the model file only if the board's model CRC-32 differs (the model stays
   loaded across rounds, as in flash);
2. PARAMS: the values the device trains from: the broadcast values of the tensors its scheme
   updates, its model's own values for the rest (``Trainer.device_params``, the rule the
   simulated client follows);
3. TRAIN with the device's scheme, precision, rounding and codec settings (DP clip and local
   noise included), then UPDATE: the encoded change, which the server validates like any other.

The board's local data enters the trainer where the device's scheme starts (features cached
below the layers it updates, as the simulated device has them), so its arena is the planner's
figure; HELLO says where, and a mismatch is refused with the reason.

The host builds the same :class:`~fedtiny.trainer.Trainer` without training it, for the channel
subsets the scheme selects (a deterministic function of the model) and the values above. A board
that does not answer raises :class:`~fedtiny.devices.link.BoardError`; Flower then counts the
client as failed for the round.
"""

from __future__ import annotations

import zlib

from flwr.app import Array, ArrayRecord

from fedtiny.client.backend import RoundResult, RoundTask, partial_update
from fedtiny.client.records import record_to_params
from fedtiny.devices.link import BoardClient, BoardError
from fedtiny.trainer import Trainer


def cancel(url: str) -> bool:
    """Stop a TRAIN the board behind `url` may still run (a new connection: the bridge answers
    a CANCEL at once, even while another connection waits for the TRAIN)."""
    try:
        client = BoardClient(url, timeout=5.0, retries=1)
        try:
            return client.cancel()
        finally:
            client.close()
    except (OSError, ValueError, BoardError):
        return False


class BoardBackend:
    """The board behind `url` (a bridge, or the board's own port); a TRAIN slower than
    `timeout_s` fails the round (and is cancelled on the board)."""

    def __init__(self, url: str, timeout_s: float):
        self.url, self.timeout_s = url, float(timeout_s)

    def train(self, task: RoundTask) -> RoundResult:
        """One training round on the board (the steps in the module docstring)."""
        url, model, tc, codec_cfg = self.url, task.model, task.train_config, task.codec
        if bool(codec_cfg.error_feedback):
            raise BoardError("error feedback keeps a residual between rounds, which the board firmware does not")
        trainer = Trainer(model, tc)
        start = trainer.device_params(record_to_params(ArrayRecord({k: Array(v) for k, v in task.received.items()}),
                                                       trainer.get_params()))
        _, subset = partial_update(trainer)
        # without error feedback the simulated client's rounding rule is the same with and without DP
        nearest = codec_cfg.rounding == "nearest"
        clip, noise = task.dp if task.dp is not None else (0.0, 0.0)
        # a bridge retries on the board's link itself (up to retries x its timeout per request);
        # towards the bridge (local TCP) one try, long enough for that
        board = BoardClient(url, timeout=120.0, retries=1, train_timeout=self.timeout_s)
        try:
            blob = model.to_bytes()
            info = board.hello()
            if info["start_layer"] != tc.start_layer:  # the arena would not be the planner's
                raise BoardError(f"the board's data enters trainable layer {info['start_layer']} but this device's "
                                 f"update scheme starts at layer {tc.start_layer}: give the board data cached there")
            if info["model_crc32"] != zlib.crc32(blob):
                board.load_model(blob)
            board.set_params(start)
            try:
                res = board.train(tc, task.epochs, task.seed, int(codec_cfg.bits), bool(codec_cfg.per_channel), nearest,
                                  task.key, clip, noise)
            except BoardError:  # too slow (or the link failed): free the board for the next round
                cancel(url)
                raise
            blobs = board.update(res["update_bytes"])
        finally:
            board.close()
        accuracy = res["correct"] / res["count"] if res["count"] else 0.0
        return RoundResult(blobs, subset, float(res["loss"]), accuracy, int(res["arena_bytes"]))
