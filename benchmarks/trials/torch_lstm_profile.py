"""Where PyTorch's ``nn.LSTM`` spends a station training step (12 x 8 -> 2 x 64, batch 256,
2 threads): ``torch.profiler`` over 5 forward + backward passes after 3 warm-up ones.

    benchmarks/.venv/bin/python benchmarks/trials/torch_lstm_profile.py

2026-12-04, AVX-512 host: aten::mkldnn_rnn_layer_backward 54.3 % and aten::mkldnn_rnn_layer
39.3 % of self CPU time (oneDNN's fused RNN primitive, one call per layer per sequence).
"""

import torch
from torch import nn
from torch.profiler import profile

torch.set_num_threads(2)
m = nn.LSTM(8, 64, num_layers=2, batch_first=True)
x = torch.randn(256, 12, 8)
for _ in range(3):
    m(x)[0].sum().backward()
with profile() as p:
    for _ in range(5):
        m(x)[0].sum().backward()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
