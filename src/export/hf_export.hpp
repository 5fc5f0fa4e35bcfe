// Export to the Hugging Face layout: model.safetensors + config.json + tokenizer files, and for
// models that Olmo2ForCausalLM cannot express (MoDA, pre/post-norm), model_type "moda" with the
// modeling files of tools/hf/ copied beside them (docs/checkpoints.md).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "export/safetensors.hpp"
#include "moda/config.hpp"

namespace moda {

// One exported tensor: a contiguous range of the flat parameter vector (row blocks of our fused
// matrices are contiguous, so slicing q/k/v or gate/up needs no copy).
struct HfTensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
};

// True when HF transformers' Olmo2ForCausalLM computes exactly this model: MoDA off and OLMo2's
// own (reordered) norm placement.
bool olmo2_compatible(const Config& config);

// The exported tensors in layout order, HF names (docs/checkpoints.md lists them). Every
// parameter of the flat vector is covered exactly once.
std::vector<HfTensor> hf_tensors(const Config& config);

// config.json text.
std::string hf_config_json(const Config& config, SafeDType dtype);

struct ExportOptions {
  SafeDType dtype = SafeDType::f32;
  // Folder holding modeling_moda.py and configuration_moda.py; empty: find_hf_tools().
  std::string tools_dir;
  // Tokenizer rank files (gpt2.json, cl100k_base.json); empty: default_tokenizer_cache().
  std::string tokenizer_cache;
  bool log = true;
};

// Writes out_dir/{model.safetensors, config.json, generation_config.json, tokenizer files} (and
// the modeling files for model_type "moda"). `params` is the full flat parameter vector.
void export_hf(const Config& config, std::span<const float> params, const std::string& out_dir,
               const ExportOptions& options);
// Loads the master weights of a checkpoint (verified) and exports them.
void export_checkpoint_hf(const std::string& checkpoint_dir, const std::string& out_dir,
                          const ExportOptions& options);

// $MODA_HF_TOOLS, else tools/hf of the nearest ancestor of the working directory or of the
// running binary that has tools/hf/modeling_moda.py; empty when none.
std::string find_hf_tools();

// Tokenizer files for HF (tokenizer.json, tokenizer_config.json, special_tokens_map.json) of
// the named moda tokenizer. tokenizer.json reproduces moda's tokens: the byte tokenizer as a
// merge-free byte-level BPE, gpt2 / dolma2 as byte-level BPE whose merges are derived from the
// tiktoken ranks in `cache_dir` (skipped with a warning when the rank file is missing). Returns
// the files written.
std::vector<std::string> write_hf_tokenizer(const std::string& name, const std::string& cache_dir,
                                            int64_t model_max_length, const std::string& out_dir);

}  // namespace moda
