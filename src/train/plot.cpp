// A loss-curve PNG: training loss as a line, validation loss as dots, axes with numeric labels.
// Rasterized here (a few lines of drawing) and compressed with zlib; no plotting dependency.
#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>

#include "moda/train.hpp"

namespace moda {

namespace {

struct Rgb {
  uint8_t r, g, b;
};

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<size_t>(w * h * 3), 255) {}
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &px_[static_cast<size_t>((y * w_ + x) * 3)];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  void line(double x0, double y0, double x1, double y1, Rgb c, int thick = 1) {
    const int n = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int i = 0; i <= n; ++i) {
      const double t = static_cast<double>(i) / n;
      const int x = static_cast<int>(std::lround(x0 + t * (x1 - x0)));
      const int y = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
      for (int dy = 0; dy < thick; ++dy) {
        for (int dx = 0; dx < thick; ++dx) set(x + dx, y + dy, c);
      }
    }
  }
  void dot(double x, double y, Rgb c) {
    for (int dy = -3; dy <= 3; ++dy) {
      for (int dx = -3; dx <= 3; ++dx) {
        if (dx * dx + dy * dy <= 9) set(static_cast<int>(x) + dx, static_cast<int>(y) + dy, c);
      }
    }
  }
  // 3x5 glyphs for digits and a few signs, drawn at `scale`.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 2) {
    static const std::array<std::pair<char, std::array<uint8_t, 5>>, 14> glyphs = {{
        {'0', {7, 5, 5, 5, 7}},
        {'1', {2, 6, 2, 2, 7}},
        {'2', {7, 1, 7, 4, 7}},
        {'3', {7, 1, 7, 1, 7}},
        {'4', {5, 5, 7, 1, 1}},
        {'5', {7, 4, 7, 1, 7}},
        {'6', {7, 4, 7, 5, 7}},
        {'7', {7, 1, 1, 1, 1}},
        {'8', {7, 5, 7, 5, 7}},
        {'9', {7, 5, 7, 1, 7}},
        {'.', {0, 0, 0, 0, 2}},
        {'-', {0, 0, 7, 0, 0}},
        {'e', {0, 7, 7, 4, 7}},
        {'+', {0, 2, 7, 2, 0}},
    }};
    for (char ch : s) {
      for (const auto& [g, rows] : glyphs) {
        if (g != ch) continue;
        for (int ry = 0; ry < 5; ++ry) {
          for (int rx = 0; rx < 3; ++rx) {
            if (!(rows[static_cast<size_t>(ry)] & (4 >> rx))) continue;
            for (int sy = 0; sy < scale; ++sy) {
              for (int sx = 0; sx < scale; ++sx) set(x + rx * scale + sx, y + ry * scale + sy, c);
            }
          }
        }
      }
      x += 4 * scale;
    }
  }
  void write_png(const std::string& path) const;

 private:
  int w_, h_;
  std::vector<uint8_t> px_;
};

void put_u32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  put_u32(out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()),
                                           static_cast<uInt>(body.size()))));
}

void Canvas::write_png(const std::string& path) const {
  std::string raw;
  raw.reserve(static_cast<size_t>(h_ * (w_ * 3 + 1)));
  for (int y = 0; y < h_; ++y) {
    raw.push_back(0);  // filter: none
    raw.append(reinterpret_cast<const char*>(&px_[static_cast<size_t>(y * w_ * 3)]),
               static_cast<size_t>(w_ * 3));
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw.size()),
                6) != Z_OK) {
    throw std::runtime_error("zlib failed to compress the loss plot");
  }
  packed.resize(packed_size);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string header;
  put_u32(header, static_cast<uint32_t>(w_));
  put_u32(header, static_cast<uint32_t>(h_));
  header += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  chunk(png, "IHDR", header);
  chunk(png, "IDAT", packed);
  chunk(png, "IEND", "");
  std::ofstream out(path, std::ios::binary);
  out.write(png.data(), static_cast<std::streamsize>(png.size()));
  if (!out) throw std::runtime_error(fmt::format("cannot write {}", path));
}

}  // namespace

void write_loss_plot(const std::string& path, const std::vector<StepRecord>& history) {
  const int W = 800, H = 480, left = 80, right = 20, top = 20, bottom = 50;
  Canvas c(W, H);
  double lo = INFINITY, hi = -INFINITY;
  for (const StepRecord& r : history) {
    for (double v : {r.loss, r.val_loss}) {
      if (std::isfinite(v)) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
  }
  if (!std::isfinite(lo)) return;
  if (hi - lo < 1e-9) hi = lo + 1.0;
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  const double max_step = static_cast<double>(std::max<int64_t>(history.back().step, 1));
  auto px = [&](double step) { return left + (W - left - right) * step / max_step; };
  auto py = [&](double v) { return top + (H - top - bottom) * (hi - v) / (hi - lo); };
  const Rgb axis{0, 0, 0}, grid{225, 225, 225}, train_color{31, 119, 180}, val_color{214, 39, 40};
  for (int i = 0; i <= 4; ++i) {
    const double v = lo + (hi - lo) * i / 4.0;
    c.line(left, py(v), W - right, py(v), grid);
    c.text(8, static_cast<int>(py(v)) - 5, fmt::format("{:.3g}", v), axis);
    const double s = max_step * i / 4.0;
    c.line(px(s), top, px(s), H - bottom, grid);
    c.text(static_cast<int>(px(s)) - 10, H - bottom + 12, fmt::format("{:.0f}", s), axis);
  }
  c.line(left, top, left, H - bottom, axis);
  c.line(left, H - bottom, W - right, H - bottom, axis);
  const StepRecord* prev = nullptr;
  for (const StepRecord& r : history) {
    if (prev != nullptr) {
      c.line(px(static_cast<double>(prev->step)), py(prev->loss), px(static_cast<double>(r.step)),
             py(r.loss), train_color, 2);
    }
    prev = &r;
  }
  for (const StepRecord& r : history) {
    if (std::isfinite(r.val_loss))
      c.dot(px(static_cast<double>(r.step)), py(r.val_loss), val_color);
  }
  c.write_png(path);
}

}  // namespace moda
