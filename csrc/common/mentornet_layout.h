// Layout of the folded MentorNet the kernels take: fp32 [2072], SPEC §5 (built by
// mentormix_fast.mentornet.fold_mentornet, whose FOLD_* offsets are these).
//
// The label feature is always 0 and the epoch is shared by the batch, so the label embedding,
// the epoch embedding and fc1's bias fold into one [20] vector per epoch:
//   base[e] = E_l[0] @ W1[0:2] + E_e[e] @ W1[2:7] + b1                 (table [100, 20])
// and per example, with x = (l, l - ma):
//   c_fw = sigmoid(x . Kfw[0:2, i] + bfw[i]) * tanh(x . Kfw[0:2, j] + bfw[j])   (same for bw)
//   h    = tanh(base[e] + c_fw * W1[7] + c_bw * W1[8])                  [20]
//   v    = sigmoid(h . (W2[:, 0] + b2))
#pragma once

namespace mentormix {

constexpr int kMnEpochs = 100;
constexpr int kMnHidden = 20;
constexpr int kMnLstm = 0;                                  // [12] fw: k0i k1i bi k0j k1j bj, then bw
constexpr int kMnCfw = kMnLstm + 12;                        // [20] W1 row 7 (multiplies c_fw)
constexpr int kMnCbw = kMnCfw + kMnHidden;                  // [20] W1 row 8 (multiplies c_bw)
constexpr int kMnOut = kMnCbw + kMnHidden;                  // [20] W2[:, 0] + b2
constexpr int kMnBase = kMnOut + kMnHidden;                 // [100, 20] base table
constexpr int kMnSize = kMnBase + kMnEpochs * kMnHidden;    // 2072

static_assert(kMnSize == 2072, "folded MentorNet: SPEC §5 layout is 2072 floats");

}  // namespace mentormix
