// The work split of transformer_decode_step's grid CUDA kernel (csrc/cuda/
// transformer_decode_step.cu, docs/code-transformer.md "GPU kernels"), host- and
// device-callable so that the CPU tests check it (genfast._C._decode_schedule) without
// a GPU.
//
// One cooperative launch runs the whole step as 5 L + 2 phases separated by grid-wide
// barriers; phase 5 l + j of layer l is
//   j = 0  QKV tiles: LayerNorm 1 of the tile's sequences (recomputed by every tile:
//          D is small), their q, k, v columns; k and v go straight into the caches.
//          In layer 0 the tile first builds the residual stream x from the embeddings;
//          the tile with column0 == 0 of its sequences (the `writer`) stores it;
//   j = 1  attention items: one (sequence, head) pair each -> the context;
//   j = 2  output projection tiles: x += context W_out + b;
//   j = 3  MLP 1 tiles: LayerNorm 2 (recomputed per tile), GELU(h W_1 + b_1);
//   j = 4  MLP 2 tiles: x += hidden W_2 + b_2;
// then phase 5 L: head tiles (final LayerNorm, logits) and phase 5 L + 1: the draw,
// one block per sequence. A tile is kDecodeTileSeqs sequences x kDecodeTileColumns
// output columns; the resident blocks take a phase's items in turn (item i: block
// i mod grid). Each output element is summed by one fixed set of threads in a fixed
// order that depends on the tile only, so the results do not depend on the grid size.
#pragma once

#include <cstdint>

#include "common.h"

namespace genfast {

constexpr int kDecodeTileSeqs = 4;     // sequences per tile (each thread sums all rows)
constexpr int kDecodeTileColumns = 8;  // output columns per tile: a quarter of a warp
constexpr int kDecodeWarps = 16;       // warps per block of the grid kernel

enum DecodeItemKind : int {
  kDecodeQkv = 0,
  kDecodeAttention = 1,
  kDecodeOut = 2,
  kDecodeMlp1 = 3,
  kDecodeMlp2 = 4,
  kDecodeHead = 5,
  kDecodeDraw = 6
};

struct DecodeItem {
  int kind;     // DecodeItemKind
  int layer;    // -1 for the head and the draw
  int seq0;     // first sequence (attention, draw: the sequence)
  int column0;  // first output column; attention: the head; draw: 0
  bool writer;  // stores the embedded x of its sequences (layer 0's QKV, column0 == 0)
};

GENFAST_HOST_DEVICE inline int decode_ceil_div(int a, int b) { return (a + b - 1) / b; }

struct DecodeSchedule {
  int batch, layers, heads, width, mlp, levels;

  GENFAST_HOST_DEVICE int phases() const { return 5 * layers + 2; }
  GENFAST_HOST_DEVICE int kind(int phase) const {
    return phase < 5 * layers ? phase % 5 : (phase == 5 * layers ? kDecodeHead : kDecodeDraw);
  }
  GENFAST_HOST_DEVICE int layer(int phase) const { return phase < 5 * layers ? phase / 5 : -1; }
  // Output columns of a tile kind (0 for attention and the draw).
  GENFAST_HOST_DEVICE int columns(int kind) const {
    switch (kind) {
      case kDecodeQkv: return 3 * width;
      case kDecodeOut: case kDecodeMlp2: return width;
      case kDecodeMlp1: return mlp;
      case kDecodeHead: return levels;
      default: return 0;
    }
  }
  GENFAST_HOST_DEVICE int seq_tiles() const { return decode_ceil_div(batch, kDecodeTileSeqs); }
  GENFAST_HOST_DEVICE int items(int phase) const {
    const int k = kind(phase);
    if (k == kDecodeAttention) return batch * heads;
    if (k == kDecodeDraw) return batch;
    return decode_ceil_div(columns(k), kDecodeTileColumns) * seq_tiles();
  }
  // Item i < items(phase); in tile phases the column tiles run fastest.
  GENFAST_HOST_DEVICE DecodeItem item(int phase, int i) const {
    const int k = kind(phase), l = layer(phase);
    if (k == kDecodeAttention) return DecodeItem{k, l, i / heads, i % heads, false};
    if (k == kDecodeDraw) return DecodeItem{k, l, i, 0, false};
    const int column_tiles = decode_ceil_div(columns(k), kDecodeTileColumns);
    const int column0 = (i % column_tiles) * kDecodeTileColumns;
    return DecodeItem{k, l, (i / column_tiles) * kDecodeTileSeqs, column0,
                      k == kDecodeQkv && l == 0 && column0 == 0};
  }
  // The most items of any phase: more blocks than this would have nothing to do.
  GENFAST_HOST_DEVICE int max_items() const {
    int most = 1;
    for (int phase = 0; phase < phases(); ++phase) most = items(phase) > most ? items(phase) : most;
    return most;
  }
};

// The grid kernel's shared memory in elements of the dtype: the larger of a tile's
// staged input rows (kDecodeTileSeqs x max(D, M)) and an attention item's q, scores and
// per-slice partial sums (HD + T_max + max(HD, threads)).
GENFAST_HOST_DEVICE inline int64_t decode_grid_shared_elements(int64_t width, int64_t mlp, int64_t head_dim,
                                                               int64_t max_positions) {
  const int64_t stage = kDecodeTileSeqs * (width > mlp ? width : mlp);
  const int64_t threads = 32 * kDecodeWarps;
  const int64_t attention = head_dim + max_positions + (head_dim > threads ? head_dim : threads);
  return stage > attention ? stage : attention;
}

}  // namespace genfast
