#include "dist/gradient_buckets.hpp"

namespace moda {

GradientBuckets::GradientBuckets(Communicator& comm, const Tensor& grads, int64_t bucket_elements)
    : comm_(comm), grads_(grads), bucket_elements_(bucket_elements) {}

void GradientBuckets::ready(int64_t begin, int64_t end) {
  if (end <= begin) return;
  if (begin_ == end_) {
    begin_ = begin;
    end_ = end;
  } else if (end == begin_) {
    begin_ = begin;  // the backward walks the layers top-down: ranges mostly arrive downwards
  } else if (begin == end_) {
    end_ = end;
  } else {
    start_pending();
    begin_ = begin;
    end_ = end;
  }
  if (bucket_elements_ > 0 && end_ - begin_ >= bucket_elements_) start_pending();
}

void GradientBuckets::finish() {
  start_pending();
  comm_.wait();
}

void GradientBuckets::start_pending() {
  if (end_ > begin_) comm_.all_reduce_sum_start(grads_.slice(begin_, end_ - begin_));
  begin_ = end_ = 0;
}

}  // namespace moda
