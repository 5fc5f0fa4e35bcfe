// Gradient all-reduce in buckets, started while the backward is still running: the model hands
// over each range of the flat gradient buffer as soon as nothing adds to it any more
// (Model::forward_backward's `ready`), neighbouring ranges are merged, and a bucket is started
// once it holds `bucket_elements`. Bigger buckets cost fewer collectives (each has a fixed
// latency); smaller ones start earlier and leave less to reduce after the backward.
#pragma once

#include <cstdint>

#include "moda/backend.hpp"
#include "moda/dist.hpp"

namespace moda {

class GradientBuckets {
 public:
  // bucket_elements 0: nothing is started before finish().
  GradientBuckets(Communicator& comm, const Tensor& grads, int64_t bucket_elements);
  // Elements [begin, end) of the gradients are final for this step.
  void ready(int64_t begin, int64_t end);
  // Starts what is left and waits for every bucket: afterwards each range handed to ready() holds
  // the sum over ranks. The buckets follow the order of ready() calls, the same on every rank.
  void finish();

 private:
  void start_pending();

  Communicator& comm_;
  Tensor grads_;
  int64_t bucket_elements_;
  int64_t begin_ = 0, end_ = 0;  // the range collected but not started yet
};

}  // namespace moda
