// The prefetching wrapper of BatchLoader: one producer thread, a bounded queue of batches, each
// with the loader state after it.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "moda/data.hpp"

namespace moda {

struct PrefetchLoader::Impl {
  struct Item {
    std::vector<int32_t> tokens;
    LoaderState after;
  };
  BatchLoader loader;
  int64_t depth, batch_tokens;
  LoaderState consumed;
  std::deque<Item> queue;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::exception_ptr error;
  std::thread worker;

  Impl(BatchLoader l, int64_t d) : loader(std::move(l)), depth(d), consumed(loader.state()) {
    batch_tokens = static_cast<int64_t>(loader.micro_batch_tokens());
  }
  void start() {
    stop = false;
    worker = std::thread([this] { produce(); });
  }
  void halt() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
    if (worker.joinable()) worker.join();
    queue.clear();
  }
  void produce() {
    try {
      for (;;) {
        Item item{std::vector<int32_t>(static_cast<size_t>(batch_tokens)), {}};
        loader.next(item.tokens.data());
        item.after = loader.state();
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || static_cast<int64_t>(queue.size()) < depth; });
        if (stop) return;
        queue.push_back(std::move(item));
        cv.notify_all();
      }
    } catch (...) {
      std::lock_guard lock(mu);
      error = std::current_exception();
      cv.notify_all();
    }
  }
};

PrefetchLoader::PrefetchLoader(BatchLoader loader, int64_t depth)
    : impl_(std::make_unique<Impl>(std::move(loader), depth)) {
  impl_->start();
}

PrefetchLoader::~PrefetchLoader() { impl_->halt(); }

void PrefetchLoader::next(int32_t* out) {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [&] { return !impl_->queue.empty() || impl_->error; });
  if (impl_->queue.empty()) std::rethrow_exception(impl_->error);
  Impl::Item item = std::move(impl_->queue.front());
  impl_->queue.pop_front();
  impl_->consumed = item.after;
  lock.unlock();
  impl_->cv.notify_all();
  std::memcpy(out, item.tokens.data(), item.tokens.size() * sizeof(int32_t));
}

LoaderState PrefetchLoader::state() const {
  std::lock_guard lock(impl_->mu);
  return impl_->consumed;
}

// The loader's data and shape never change after construction: no need to halt the thread.
void PrefetchLoader::check_restorable(const LoaderState& state) const {
  impl_->loader.check_restorable(state);
}

void PrefetchLoader::restore(const LoaderState& state) {
  impl_->halt();
  impl_->loader.restore(state);
  impl_->consumed = impl_->loader.state();
  impl_->error = nullptr;
  impl_->start();
}

}  // namespace moda
