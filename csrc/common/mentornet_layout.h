// Layout of the folded MentorNet parameters passed to the kernels (SPEC §1.4).
//
// The label feature is always 0 and the epoch is shared by the batch, so per step the label
// embedding, the epoch embedding and fc1's bias fold into one [20] vector per epoch:
//   base[e] = E_l[0] @ W1[0:2] + E_e[e] @ W1[2:7] + b1                 (table [100, 20])
// and per example, with x = (l, l - ma):
//   c_fw = sigmoid(x . Kfw[0:2, 0] + bfw[0]) * tanh(x . Kfw[0:2, 1] + bfw[1])   (same for bw)
//   h    = tanh(base[e] + c_fw * W1[7] + c_bw * W1[8])                  [20]
//   v    = sigmoid(h . (W2[:, 0] + b2))
// Python (mentormix_fast/cpp_backend.py) builds this float32 tensor once per parameter version.
#pragma once

namespace mentormix {

constexpr int kMnEpochs = 100;
constexpr int kMnHidden = 20;
constexpr int kMnBase = 0;                                  // [100, 20] base table
constexpr int kMnCfw = kMnBase + kMnEpochs * kMnHidden;     // [20] W1 row 7 (c_fw)
constexpr int kMnCbw = kMnCfw + kMnHidden;                  // [20] W1 row 8 (c_bw)
constexpr int kMnOut = kMnCbw + kMnHidden;                  // [20] W2[:, 0] + b2
constexpr int kMnLstm = kMnOut + kMnHidden;                 // [12] fw: k00 k10 b0 k01 k11 b1, then bw
constexpr int kMnSize = kMnLstm + 12;

}  // namespace mentormix
