// The work split of gated_pixelcnn_row's batched CUDA kernel (csrc/cuda/
// gated_pixelcnn_row.cu), host- and device-callable so that the CPU tests can check it
// (genfast._C._gated_row_tiles) without a GPU.
//
// The kernel walks the row's sub-pixels s = j * C + c (column j, colour c) in order and
// splits each sub-pixel into L + 3 phases, separated by grid-wide barriers:
//   phase l < L   "layer phase": the gate tiles of layer l (colour group c's
//                 pre-activations and gated units for all images); for l >= 1 each gate
//                 tile first computes layer l-1's residual output for its own images
//                 (the group-c slice its product needs) and the skip tiles add layer
//                 l-1's skip output to the skip sum;
//   phase L       head tiles 1: the last layer's skip output (inline, as the residual
//                 above), then relu -> 1x1 -> relu to group c of the head's hidden layer;
//   phase L + 1   head tiles 2: colour c's logits;
//   phase L + 2   draw tiles: one warp per image draws (or takes the known value) and
//                 writes the level's features into the first layer's input row.
// A tile is kRowTileImages images x kRowTileColumns output columns (one per lane); the
// resident blocks take a phase's tiles in turn. Of the tiles that recompute an inline
// slice (gate tiles of layers >= 1, head tiles 1), the one with column0 == 0 of its
// images is the `writer`: it alone stores the slice where later phases read it.
#pragma once

#include <cstdint>

#include "common.h"

namespace genfast {

constexpr int kRowTileImages = 8;    // images per tile: one per warp of a block
constexpr int kRowTileColumns = 32;  // output columns per tile: one per lane
constexpr int kRowTileWarps = 8;     // warps per block (they split each reduction)

enum RowTileKind : int { kGateTile = 0, kSkipTile = 1, kHeadTile1 = 2, kHeadTile2 = 3, kDrawTile = 4 };

struct RowTile {
  int kind;     // RowTileKind
  int layer;    // gate: its layer; skip: the layer whose skip output it adds; else -1
  int image0;   // first image of the tile
  int column0;  // first output column (gate, skip, head 1: in [0, H / C); head 2: in [0, V))
  bool writer;  // stores the inline slice it recomputes (gate l >= 1, head 1)
};

GENFAST_HOST_DEVICE inline int row_ceil_div(int a, int b) { return (a + b - 1) / b; }

struct GatedRowTiling {
  int batch, channels, hidden, levels, layers;

  GENFAST_HOST_DEVICE int group() const { return hidden / channels; }  // Hg: a colour group's channels
  GENFAST_HOST_DEVICE int image_tiles() const { return row_ceil_div(batch, kRowTileImages); }
  GENFAST_HOST_DEVICE int group_tiles() const { return row_ceil_div(group(), kRowTileColumns) * image_tiles(); }
  GENFAST_HOST_DEVICE int phases() const { return layers + 3; }  // per sub-pixel

  // Tiles of phase `phase` (of every sub-pixel: the count does not depend on it).
  GENFAST_HOST_DEVICE int tiles(int phase) const {
    if (phase == 0) return group_tiles();
    if (phase < layers) return 2 * group_tiles();  // gate tiles of layer l, skip tiles of l - 1
    if (phase == layers) return group_tiles();
    if (phase == layers + 1) return row_ceil_div(levels, kRowTileColumns) * image_tiles();
    return image_tiles();  // draw: one warp per image
  }

  // Tile t < tiles(phase) of phase `phase`. Within a kind, tiles run column tiles fastest.
  GENFAST_HOST_DEVICE RowTile tile(int phase, int t) const {
    const int group_columns = row_ceil_div(group(), kRowTileColumns);
    RowTile tile{kGateTile, phase, 0, 0, false};
    if (phase < layers) {
      if (t >= group_tiles()) {  // the skip tiles of layer phase - 1
        t -= group_tiles();
        tile.kind = kSkipTile;
        tile.layer = phase - 1;
      }
    } else if (phase == layers) {
      tile.kind = kHeadTile1;
      tile.layer = -1;
    } else if (phase == layers + 1) {
      const int level_columns = row_ceil_div(levels, kRowTileColumns);
      return RowTile{kHeadTile2, -1, (t / level_columns) * kRowTileImages,
                     (t % level_columns) * kRowTileColumns, false};
    } else {
      return RowTile{kDrawTile, -1, t * kRowTileImages, 0, false};
    }
    tile.image0 = (t / group_columns) * kRowTileImages;
    tile.column0 = (t % group_columns) * kRowTileColumns;
    tile.writer = tile.column0 == 0 && (tile.kind == kHeadTile1 || (tile.kind == kGateTile && phase >= 1));
    return tile;
  }

  // The most tiles of any phase: more blocks than this would have nothing to do.
  GENFAST_HOST_DEVICE int max_tiles() const {
    int most = 1;
    for (int phase = 0; phase < phases(); ++phase) most = tiles(phase) > most ? tiles(phase) : most;
    return most;
  }
};

// The order of the kernel's steps: step q of a row is phase q % phases() of sub-pixel
// s = q / phases(), column s / C, colour s % C.
struct RowStep {
  int64_t column;
  int colour, phase;
};

GENFAST_HOST_DEVICE inline RowStep row_step(int64_t q, int phases, int channels) {
  const int64_t s = q / phases;
  return RowStep{s / channels, static_cast<int>(s % channels), static_cast<int>(q % phases)};
}

}  // namespace genfast
