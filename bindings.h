// What the bindings of _C and _emulated_cuda share: the forward state's hand-off to a backward.
#pragma once

#include <torch/csrc/utils/pybind.h>

#include <vector>

#include "rasterize_points.h"

namespace dgrd {

// The forward's state from the Python list the autograd context keeps. With `release` (the
// graph is not kept for another backward) the list is emptied, so that the backward holds the
// state's only references and can free what its render backward alone reads (backward_cuda).
inline ForwardState take_state(pybind11::list state, bool release) {
  ForwardState s = ForwardState::from_list(state.cast<std::vector<at::Tensor>>());
  if (release) state.attr("clear")();
  return s;
}

}  // namespace dgrd
