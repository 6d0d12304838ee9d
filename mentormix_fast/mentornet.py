"""MentorNet (Jiang et al., ICML 2018) in the form the MentorMix release runs it (SPEC §1.4).

Inputs per example: loss ``l``, loss difference ``l - ma``, label feature (always 0 in the
release), epoch feature ``e`` in 0..99. The network, with the release's parameter shapes:

* ``label_embedding`` [2, 2], ``epoch_embedding`` [100, 5] (the latter is never trained);
* a one-step bidirectional LSTM with one unit per direction, zero initial state, forget bias 0:
  per direction ``[a_i, a_j, a_f, a_o] = [l, l - ma, h0=0] @ kernel [3, 4] + bias [4]`` and the
  cell state ``c = sigmoid(a_i) * tanh(a_j)`` (the forget gate multiplies a zero state);
* ``feat = [E_l[0], E_e[e], c_fw, c_bw]`` (9 values; the cell states, not the hidden states);
* ``h = tanh(feat @ fc1_weight [9, 20] + fc1_bias [20])``;
* ``v = sigmoid(h @ (fc2_weight [20, 1] + fc2_bias [1]))``: the release adds the output bias to the
  weight matrix, so the logit is ``h @ fc2_weight + fc2_bias * sum(h)``.
"""

from __future__ import annotations

import json
from importlib import resources

import torch
from torch import nn

NUM_EPOCHS = 100
LABEL_EMBEDDING = (2, 2)
EPOCH_EMBEDDING_SIZE = 5
NUM_FC_NODES = 20
FEATURE_DIM = LABEL_EMBEDDING[1] + EPOCH_EMBEDDING_SIZE + 2
PD_WEIGHTS_FILE = "mentornet_pd.json"


def _glorot_uniform_(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """TF's default variable initializer: U(-a, a), ``a = sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = (t.shape[0], t.shape[1]) if t.dim() == 2 else (t.numel(), t.numel())
    a = (6.0 / (fan_in + fan_out)) ** 0.5
    with torch.no_grad():
        return t.uniform_(-a, a, generator=generator)


class MentorNet(nn.Module):
    """The release's MentorNet. ``forward(loss, loss_diff, epoch, label=0) -> v`` in (0, 1), [B].

    ``loss`` and ``loss_diff`` are [B] float tensors; ``epoch`` an int or an integer tensor (0-d or
    [B]) in 0..99 (larger values are clamped to 99, as in the release); ``label`` 0 or 1.
    """

    def __init__(self, generator: torch.Generator | None = None):
        super().__init__()
        self.label_embedding = nn.Parameter(torch.empty(*LABEL_EMBEDDING))
        # Never trained in the release: kept a buffer-like parameter with requires_grad False.
        self.epoch_embedding = nn.Parameter(torch.empty(NUM_EPOCHS, EPOCH_EMBEDDING_SIZE), requires_grad=False)
        self.lstm_fw_kernel = nn.Parameter(torch.empty(3, 4))
        self.lstm_fw_bias = nn.Parameter(torch.zeros(4))
        self.lstm_bw_kernel = nn.Parameter(torch.empty(3, 4))
        self.lstm_bw_bias = nn.Parameter(torch.zeros(4))
        self.fc1_weight = nn.Parameter(torch.empty(FEATURE_DIM, NUM_FC_NODES))
        self.fc1_bias = nn.Parameter(torch.empty(NUM_FC_NODES))
        self.fc2_weight = nn.Parameter(torch.empty(NUM_FC_NODES, 1))
        self.fc2_bias = nn.Parameter(torch.empty(1))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The release's initialisers: Glorot-uniform embeddings and LSTM kernels, zero LSTM
        biases, standard-normal fully connected weights and biases."""
        for t in (self.label_embedding, self.epoch_embedding, self.lstm_fw_kernel, self.lstm_bw_kernel):
            _glorot_uniform_(t.data, generator)
        with torch.no_grad():
            self.lstm_fw_bias.zero_()
            self.lstm_bw_bias.zero_()
            for t in (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias):
                t.normal_(generator=generator)

    @staticmethod
    def _cell_state(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One LSTM step from a zero state: ``sigmoid(a_i) * tanh(a_j)``; x [B, 2] -> [B]."""
        gates = x @ kernel[:2] + bias  # the h0 row of the kernel multiplies zeros
        return torch.sigmoid(gates[:, 0]) * torch.tanh(gates[:, 1])

    def logit(self, loss, loss_diff, epoch, label=0) -> torch.Tensor:
        """The pre-sigmoid output ``h @ fc2_weight + fc2_bias * sum(h)``, [B]."""
        dtype = self.fc1_weight.dtype
        loss = loss.to(dtype)
        x = torch.stack([loss, loss_diff.to(dtype)], dim=1)
        c_fw = self._cell_state(x, self.lstm_fw_kernel, self.lstm_fw_bias)
        c_bw = self._cell_state(x, self.lstm_bw_kernel, self.lstm_bw_bias)
        epoch = torch.as_tensor(epoch, device=loss.device).to(torch.int64).clamp(0, NUM_EPOCHS - 1)
        epoch = epoch.expand(loss.shape[0]) if epoch.dim() == 0 else epoch
        label = torch.as_tensor(label, device=loss.device).to(torch.int64).expand(loss.shape[0])
        feat = torch.cat(
            [self.label_embedding[label], self.epoch_embedding[epoch], c_fw.unsqueeze(1), c_bw.unsqueeze(1)], dim=1
        )
        h = torch.tanh(feat @ self.fc1_weight + self.fc1_bias)
        return (h @ (self.fc2_weight + self.fc2_bias)).squeeze(1)

    def forward(self, loss, loss_diff, epoch, label=0) -> torch.Tensor:
        return torch.sigmoid(self.logit(loss, loss_diff, epoch, label))

    # --- serialisation as plain JSON (a few hundred floats, readable and diffable) -------------

    def to_json_dict(self) -> dict:
        return {name: p.detach().cpu().double().tolist() for name, p in self.named_parameters(recurse=False)}

    @classmethod
    def from_json_dict(cls, data: dict) -> MentorNet:
        net = cls()
        with torch.no_grad():
            for name, p in net.named_parameters(recurse=False):
                value = torch.tensor(data[name], dtype=p.dtype)
                if value.shape != p.shape:
                    raise ValueError(f"MentorNet weights: {name} has shape {tuple(value.shape)}, expected {tuple(p.shape)}")
                p.copy_(value)
        return net


# The folded layout of SPEC §5: offsets into the fp32 vector the kernels take.
FOLD_LSTM = 0  # 2 x 6 gate coefficients (forward, backward)
FOLD_CFW = 12  # W1[7]
FOLD_CBW = FOLD_CFW + NUM_FC_NODES  # W1[8]
FOLD_OUT = FOLD_CBW + NUM_FC_NODES  # W2[:, 0] + b2
FOLD_BASE = FOLD_OUT + NUM_FC_NODES  # [100, 20] per-epoch base vectors
FOLD_SIZE = FOLD_BASE + NUM_EPOCHS * NUM_FC_NODES


@torch.no_grad()
def fold_mentornet(net: MentorNet | None, device=None) -> torch.Tensor:
    """The MentorNet as every kernel takes it (SPEC §5): fp32 [2072], or an empty tensor for
    ``None`` (the threshold weighting). Per step the label feature is 0 and the epoch is shared by
    the batch, so ``E_l[0] W1[0:2] + E_e[e] W1[2:7] + b1`` is one [20] vector per epoch e, and only
    rows 0-1 and gate columns i, j of each LSTM kernel meet non-zero inputs."""
    if net is None:
        return torch.empty(0, dtype=torch.float32, device=device)
    w1 = net.fc1_weight.double()
    emb = net.epoch_embedding.double()
    epochs = torch.arange(NUM_EPOCHS, device=emb.device).clamp_max(emb.shape[0] - 1)
    base = net.label_embedding[0].double() @ w1[0:2] + emb[epochs] @ w1[2:7] + net.fc1_bias.double()

    def gates(kernel, bias):
        return torch.stack([kernel[0, 0], kernel[1, 0], bias[0], kernel[0, 1], kernel[1, 1], bias[1]]).double()

    parts = [gates(net.lstm_fw_kernel, net.lstm_fw_bias), gates(net.lstm_bw_kernel, net.lstm_bw_bias), w1[7], w1[8],
             (net.fc2_weight[:, 0] + net.fc2_bias).double(), base.reshape(-1)]
    folded = torch.cat(parts).to(device=device if device is not None else w1.device, dtype=torch.float32)
    assert folded.numel() == FOLD_SIZE
    return folded.contiguous()


def mentornet_pd() -> MentorNet:
    """The package's MentorNet-PD (trained by ``python -m mentormix_fast.train.fit_mentornet``), frozen."""
    text = resources.files("mentormix_fast").joinpath("data", PD_WEIGHTS_FILE).read_text()
    net = MentorNet.from_json_dict(json.loads(text)["parameters"])
    net.requires_grad_(False)
    return net.eval()
