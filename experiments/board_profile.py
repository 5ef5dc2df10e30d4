"""Instruction counts per layer and peak RAM per update scheme, measured on the emulated
Cortex-M4 (QEMU mps2-an386 running fedtiny's board firmware under ``-icount shift=0``).

    python experiments/board_profile.py [--out DIR] [hydra overrides...]

* Calibration: under ``-icount shift=0`` QEMU advances virtual time by 1 ns per executed
  instruction, and the FPGAIO COUNTER ticks at a fixed rate of virtual time. The board times
  ``ft_hal_spin(n)`` (a loop of exactly 4n instructions) for two lengths; instructions per tick
  is the slope.
* The int8 frozen prefix: one profiled forward pass (PROFILE) on partition 0's board; per
  layer instructions and instructions per MAC.
* Per scheme (planner candidates, float32 and int8): one epoch of training on partition 0's
  data (TRAIN), then STATS: per trainable layer forward and backward instructions per sample,
  instructions per MAC of the forward, backward and SGD-update work as the energy model counts
  MACs (fedtiny.budgets.energy.training_macs), arena bytes used (the planner's figure), and peak
  RAM = static RAM (.data + .bss: the firmware's buffers, its 64 KiB arena among them) + the
  deepest stack use during that TRAIN (the stack is painted when it starts), against the linker's
  SRAM budget; the trainer's own need is the arena bytes used + that stack.

Instructions are not cycles: on a Cortex-M4 most instructions take one cycle, loads and
stores two, and branches two to four, so cycles per MAC are at least the instructions per MAC
reported here. Writes ``board_profile_layers`` and ``board_profile_schemes`` (.csv/.md) to --out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import write_table  # noqa: E402

SCHEMES = ("head", "head+bias1", "head+ch0.5x1", "head+full1", "head+full2", "head/int8", "head+bias1/int8",
           "head+ch0.5x1/int8", "head+full1/int8", "head+full2/int8")


def measure(overrides: list[str], out: Path, schemes=SCHEMES, epochs: int = 1, log=print) -> dict:
    from fedtiny.budgets.energy import layer_macs, training_macs
    from fedtiny.budgets.memory import candidate_schemes, scheme_config
    from fedtiny.config import compose
    from fedtiny.devices.emulate import Fleet, cached_firmware
    from fedtiny.devices.link import BoardClient, data_block
    from fedtiny.client.context import RunContext, train_config
    from fedtiny.trainer import Trainer

    cfg = compose(["progress=false", *overrides])
    st = RunContext(cfg)
    model, c = st.model, st.task.clients[0]
    layers = model.spec.layers
    first = model.first_trainable
    firmware = cached_firmware(cfg.cache_dir)
    with tempfile.TemporaryDirectory() as work, \
            Fleet(firmware, [data_block(st.features(c.train.x), c.train.y)], work, icount=True,
                  in_process_bridges=True) as fleet:
        board = BoardClient(fleet.urls[0], timeout=60.0, retries=1, train_timeout=1800.0)
        board.load_model(model.to_bytes())
        t1, t2 = board.spin(250_000), board.spin(1_250_000)
        ipt = 4 * 1_000_000 / (t2 - t1)  # instructions per counter tick
        log(f"calibration: {ipt:.3f} instructions per FPGAIO counter tick")
        prof = board.profile(1)
        layer_rows = []
        for i, layer in enumerate(layers[:first]):
            macs = layer_macs(layer)
            instr = prof["prefix"][i] * ipt
            layer_rows.append({"layer": i, "type": layer.type, "part": "int8 prefix", "macs": macs,
                               "fwd_instr": round(instr), "fwd_instr_per_mac": round(instr / macs, 2) if macs else "",
                               "bwd_instr": "", "bwd_instr_per_mac": ""})
        int8_macs = sum(layer_macs(layer) for layer in layers[:first])
        int8_instr = sum(prof["prefix"][:first]) * ipt
        by_name = {s.name: s for s in candidate_schemes(model, ("float32", "int8"))}
        base = train_config(cfg)
        scheme_rows = []
        deepest = [n for n in schemes if n in by_name and "+full" in n and "/" not in n][-1:]
        for name in schemes:
            if name not in by_name:
                continue
            s = by_name[name]
            tc = replace(scheme_config(model, base, s.update, s.precision), start_layer=0)
            trainer = Trainer(model, tc)
            board.set_params(trainer.device_params(trainer.get_params()))
            res = board.train(tc, epochs, 1, 8, True, False, (0, 1, 0))
            stats = board.stats()
            n = stats["samples"]
            macs = training_macs(model, tc, len(c.train.y), epochs)
            fwd = (sum(stats["forward"]) + stats["input"]) * ipt
            bwd = (sum(stats["backward"]) + stats["loss"]) * ipt
            upd = stats["apply"] * ipt
            peak = stats["static_ram"] + stats["stack_peak"]
            scheme_rows.append({
                "scheme": name, "arena_B": res["arena_bytes"], "planner_arena_B": trainer.plan.arena_bytes,
                "stack_peak_B": stats["stack_peak"], "trainer_ram_B": res["arena_bytes"] + stats["stack_peak"],
                "static_ram_B": stats["static_ram"], "peak_ram_B": peak,
                "budget_B": stats["ram_budget"], "fits": peak <= stats["ram_budget"],
                "instr_per_sample": round(stats["total"] * ipt / max(1, n)),
                "fwd_instr_per_mac": round(fwd / macs["float_fwd"], 2) if macs["float_fwd"] else "",
                "bwd_instr_per_mac": round(bwd / macs["float_bwd"], 2) if macs["float_bwd"] else "",
                "update_instr_per_mac": round(upd / macs["update"], 2) if macs["update"] else "",
            })
            if name in deepest:  # per layer, with the most layers trained
                for k, layer in enumerate(layers[first:]):
                    i = first + k
                    m = layer_macs(layer)
                    f_i, b_i = stats["forward"][i] * ipt / n, stats["backward"][i] * ipt / n
                    layer_rows.append({"layer": i, "type": layer.type, "part": f"trainable ({name})", "macs": m,
                                       "fwd_instr": round(f_i), "fwd_instr_per_mac": round(f_i / m, 2) if m else "",
                                       "bwd_instr": round(b_i), "bwd_instr_per_mac": round(b_i / m, 2) if m else ""})
            log(f"{name}: {scheme_rows[-1]}")
        board.close()
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "board_profile_layers", layer_rows)
    write_table(out, "board_profile_schemes", scheme_rows)
    summary = {"instructions_per_tick": ipt, "int8_instr_per_mac": int8_instr / int8_macs if int8_macs else None}
    print(f"int8 prefix: {summary['int8_instr_per_mac']:.2f} instructions per MAC")
    return {"layers": layer_rows, "schemes": scheme_rows, **summary}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/board_profile")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    measure(args.overrides, Path(args.out))


if __name__ == "__main__":
    main()
