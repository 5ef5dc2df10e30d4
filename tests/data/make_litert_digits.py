"""Makes tests/data/digits_litert_int8.tflite with a real converter (not run in CI).

The fixture the TFLite tests take from outside fedtiny: a small CNN trained in PyTorch on the
vendor split of fedtiny's digits task, quantized with PT2E (per-channel symmetric weights,
calibrated on 256 vendor samples) and converted to a fully int8 .tflite by litert-torch. Run
it in a virtual environment that has litert-torch (0.10.0 made the committed file; it installs
from the package index with torch 2.13):

    python -m venv --system-site-packages /tmp/lvenv && /tmp/lvenv/bin/pip install litert-torch
    /tmp/lvenv/bin/python tests/data/make_litert_digits.py tests/data/digits_litert_int8.tflite

The converter emits PAD + DEPTHWISE_CONV_2D (a convolution of one input channel), a SAME
DEPTHWISE_CONV_2D, a 1x1 CONV_2D, MEAN (for AdaptiveAvgPool2d) and two per-channel
FULLY_CONNECTED, all int8, with an int8 input and output.
"""

import sys

import torch
from torch import nn


def main(out: str) -> None:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize import quant_config
    from omegaconf import OmegaConf
    from torchao.quantization.pt2e import quantize_pt2e

    from fedtiny.data import build_task

    cfg = OmegaConf.create({"name": "digits", "pretrain_fraction": 0.3, "num_clients": 10, "alpha": 1.0,
                            "test_fraction": 0.25, "holdout_fraction": 0.2, "seed": 0})
    task = build_task("digits", cfg)
    x, y = task.pretrain.x, task.pretrain.y
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(y)
    for _ in range(60):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    net.eval()
    xs = torch.tensor(task.server_test.x).permute(0, 3, 1, 2)
    print("float accuracy on the field data:", float((net(xs).argmax(1).numpy() == task.server_test.y).mean()))

    class NHWC(nn.Module):  # the converter's input is NHWC, as fedtiny's samples
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v):
            return self.inner(v.permute(0, 3, 1, 2))

    args = (torch.tensor(x[:1]),)
    m = torch.export.export(NHWC(net).eval(), args).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    m = quantize_pt2e.prepare_pt2e(m, quantizer)
    for i in range(256):
        m(torch.tensor(x[i:i + 1]))
    m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
    litert_torch.convert(m, args, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)).export(out)
    print("written", out)


if __name__ == "__main__":
    main(sys.argv[1])
