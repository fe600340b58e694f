// chunkflow-data: build and inspect tokenized datasets.
//   prepare  JSONL {"input_ids": [...], "labels"|"loss_mask": [...]}, {"text": ...} or
//            {"messages": [...]} -> indexed dataset (+ loss mask)
//   synth    the bundled long-tail demo dataset (or lengths from a histogram file)
//   stats    length histogram (text + SVG) and chunk / padding / packing figures
//   tokenize text -> token ids with a model's own tokenizer.json (data/bpe_tokenizer.h)
//   show     a dataset's sequences as text, with the tokens that carry no loss marked
//   render   chat lines through the model's chat template, with the text that carries loss
#include <cstdio>
#include <fstream>
#include <optional>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "configs/data_config.h"
#include "core/command_line.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/strings.h"
#include "data/bpe_tokenizer.h"
#include "data/chat_template.h"
#include "data/special_tokens.h"
#include "data/chunk_plan.h"
#include "data/dataset_stats.h"
#include "data/indexed_dataset.h"
#include "data/jsonl_prepare.h"
#include "data/sampler.h"
#include "data/synthetic.h"

namespace chunkflow {
namespace {

constexpr const char* kUsage =
    "usage: chunkflow-data <command> [options]\n"
    "  prepare   convert JSONL token ids (with labels / loss_mask), text or chat messages to an indexed dataset\n"
    "  synth     write the synthetic long-tail demo dataset\n"
    "  stats     length distribution and chunk / padding / packing figures of a dataset\n"
    "  tokenize  token ids of text with a model's own tokenizer.json\n"
    "  show      sequences of a dataset as text (its tokenizer.json), no-loss tokens marked\n"
    "  render    chat lines through a model's chat template, with the text that carries loss\n"
    "Run 'chunkflow-data <command> --help' for its options.\n";

// The id of the model folder's eos_token (data/special_tokens.h): what a text sample ends with.
int32_t eos_id(const data::BpeTokenizer& tokenizer) {
  const std::string folder = data::model_folder(tokenizer.source());
  const std::string eos = data::read_special_tokens(folder).find("eos_token");
  CF_CHECK(!eos.empty(), folder, ": no eos_token in tokenizer_config.json or special_tokens_map.json (needed by --append-eos)");
  const int32_t id = tokenizer.token_id(eos);
  CF_CHECK(id >= 0, folder, ": eos_token '", eos, "' is not a token of ", tokenizer.source());
  return id;
}

// Calls visit(record) for each non-blank line of a JSONL file. A line that is not
// JSON, or a core::Error from visit, stops the command with "<input>:<line>: ...".
template <typename Json, typename Visit>
void for_each_jsonl_line(const std::string& input, const Visit& visit) {
  std::ifstream lines(input);
  CF_CHECK(lines.good(), "cannot open ", input);
  int64_t number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json record;
    try {
      record = Json::parse(line);
    } catch (const nlohmann::json::exception& error) {
      CF_FAIL(input, ":", number, ": not JSON (", error.what(), ")");
    }
    try {
      visit(record);
    } catch (const core::Error& error) {
      CF_FAIL(input, ":", number, ": ", error.what());
    }
  }
}

int run_prepare(const std::vector<std::string>& args) {
  data::PrepareOptions options;
  bool quiet = false, append_eos = false;
  std::string tokenizer_path;
  int64_t threads = 0;
  core::CommandLine command_line("chunkflow-data prepare",
                                 "Converts JSONL lines {\"input_ids\": [...]} (optional \"labels\" with -100 for "
                                 "no loss, or \"loss_mask\"), or with --tokenizer {\"text\": \"...\"} or {\"messages\": [...]} (rendered by "
                                 "the model's chat template), into "
                                 "<output>.bin/.idx (+ <output>_loss_mask).");
  command_line.add_string("input", &options.input, "JSONL file", true);
  command_line.add_string("output", &options.output_prefix, "output prefix", true);
  command_line.add_int("vocab-size", &options.vocab_size, "reject ids >= this (0: unchecked)");
  command_line.add_string("dtype", &options.dtype, "token dtype: auto, uint16, int32, ...");
  command_line.add_flag("skip-bad-lines", &options.skip_bad_lines, "skip and count bad lines instead of stopping");
  command_line.add_int("max-errors", &options.max_reported_errors, "bad lines to list when skipping");
  command_line.add_string("tokenizer", &tokenizer_path,
                          "a model's tokenizer.json (or its folder): lines may hold \"text\", tokenized with it");
  command_line.add_flag("append-eos", &append_eos, "end each text line with the model's eos_token");
  command_line.add_flag("add-special-tokens", &options.add_special_tokens,
                        "add the tokenizer's own special tokens around each text (e.g. Llama 3's <|begin_of_text|>)");
  std::string chat_template_file, loss_on = "assistant";
  command_line.add_string("chat-template", &chat_template_file,
                          "a Jinja chat template file for {\"messages\": ...} lines (default: the tokenizer folder's)");
  command_line.add_string("loss-on", &loss_on, "chat lines: assistant (default), last (assistant message) or all tokens");
  command_line.add_int("threads", &threads, "threads that parse and tokenize (default: every core)");
  command_line.add_flag("quiet", &quiet, "no progress output");
  if (!command_line.parse(args)) return 0;
  options.show_progress = !quiet;
  options.loss_on = data::parse_loss_on(loss_on);
  options.threads = threads;
  CF_CHECK((!append_eos && !options.add_special_tokens && chat_template_file.empty()) || !tokenizer_path.empty(),
           "--append-eos, --add-special-tokens and --chat-template need --tokenizer");
  std::optional<data::BpeTokenizer> tokenizer;
  std::optional<data::ChatTemplate> chat_template;
  if (!tokenizer_path.empty()) {
    tokenizer.emplace(data::BpeTokenizer::load(tokenizer_path));
    options.tokenizer = &*tokenizer;
    if (append_eos) options.append_id = eos_id(*tokenizer);
    try {
      chat_template = data::ChatTemplate::find(tokenizer_path, chat_template_file);
      if (chat_template) options.chat_template = &*chat_template;
    } catch (const core::Error& error) {
      // A template this engine cannot read matters only to chat lines (and to --chat-template).
      CF_CHECK(chat_template_file.empty(), error.what());
      options.chat_template_refusal = error.what();
    }
  }
  const data::PrepareSummary summary = data::prepare_jsonl(options);
  std::printf("%s\n", summary.to_text().c_str());
  return 0;
}

std::string ids_json(const std::vector<int32_t>& ids) {
  return nlohmann::json{{"ids", ids}}.dump();
}

int run_tokenize(const std::vector<std::string>& args) {
  std::string tokenizer_path, text, input;
  bool add_special_tokens = false;
  core::CommandLine command_line("chunkflow-data tokenize",
                                 "Prints the token ids of text as the model's own Hugging Face tokenizer gives them "
                                 "(tokenizer.json; special tokens only with --add-special-tokens), one JSON line "
                                 "{\"ids\": [...]} per text.");
  command_line.add_string("tokenizer", &tokenizer_path, "a tokenizer.json, or the model folder holding one", true);
  command_line.add_string("text", &text, "one text to tokenize");
  command_line.add_string("input", &input, "JSONL file of {\"text\": \"...\"} lines to tokenize");
  command_line.add_flag("add-special-tokens", &add_special_tokens,
                        "add the tokenizer's own special tokens around each text, as tokenizers' encode() does");
  if (!command_line.parse(args)) return 0;
  CF_CHECK(text.empty() != input.empty(), "chunkflow-data tokenize needs exactly one of --text and --input");
  const data::BpeTokenizer tokenizer = data::BpeTokenizer::load(tokenizer_path);
  if (!text.empty()) {
    std::printf("%s\n", ids_json(tokenizer.encode(text, add_special_tokens)).c_str());
    return 0;
  }
  for_each_jsonl_line<nlohmann::json>(input, [&](const nlohmann::json& record) {
    CF_CHECK(record.is_object() && record.contains("text") && record["text"].is_string(), "expected {\"text\": \"...\"}");
    std::printf("%s\n", ids_json(tokenizer.encode(record["text"].get<std::string>(), add_special_tokens)).c_str());
  });
  return 0;
}

int run_show(const std::vector<std::string>& args) {
  std::string data_path, tokenizer_path;
  int64_t first = 0, count = 1;
  bool as_json = false;
  core::CommandLine command_line("chunkflow-data show",
                                 "Prints sequences of a dataset as text, decoded with the model's tokenizer.json; "
                                 "with a loss mask beside the dataset, the tokens that carry no loss are shown "
                                 "between [[ and ]].");
  command_line.add_string("data", &data_path, "dataset prefix (<prefix>.bin/.idx)", true);
  command_line.add_string("tokenizer", &tokenizer_path, "a tokenizer.json, or the model folder holding one", true);
  command_line.add_int("sequence", &first, "first sequence to show (default 0)");
  command_line.add_int("count", &count, "sequences to show (default 1)");
  command_line.add_flag("json", &as_json,
                        "one JSON line per sequence: sequence, tokens, loss_tokens, text, marked (with [[ ]])");
  if (!command_line.parse(args)) return 0;
  const data::BpeTokenizer tokenizer = data::BpeTokenizer::load(tokenizer_path);
  const data::IndexedDataset dataset(data_path);
  CF_CHECK(first >= 0 && first < dataset.size() && count >= 1, "--sequence ", first, " --count ", count,
           ": the dataset ", data_path, " has sequences 0..", dataset.size() - 1);
  const std::string mask_prefix = data::loss_mask_prefix(data_path);
  std::optional<data::LossMaskDataset> mask;
  if (core::path_exists(data::idx_path(mask_prefix))) mask.emplace(mask_prefix, dataset);
  for (int64_t sequence = first; sequence < std::min(first + count, dataset.size()); ++sequence) {
    const std::vector<int32_t> ids = dataset.read(sequence);
    const std::vector<uint8_t> targets = mask ? mask->read(sequence) : std::vector<uint8_t>(ids.size(), 1);
    const int64_t carrying = std::count(targets.begin(), targets.end(), 1);
    // Runs of tokens with the same mask value, each decoded as one piece.
    std::string text;
    for (size_t begin = 0; begin < ids.size();) {
      size_t end = begin;
      while (end < ids.size() && targets[end] == targets[begin]) ++end;
      const std::string piece = tokenizer.decode(std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(begin),
                                                                      ids.begin() + static_cast<std::ptrdiff_t>(end)));
      text += targets[begin] ? piece : "[[" + piece + "]]";
      begin = end;
    }
    if (as_json) {
      std::printf("%s\n", nlohmann::json{{"sequence", sequence}, {"tokens", ids.size()}, {"loss_tokens", carrying},
                                         {"text", tokenizer.decode(ids)}, {"marked", text}}
                                .dump(-1, ' ', true, nlohmann::json::error_handler_t::replace)
                                .c_str());
      continue;
    }
    std::printf("sequence %lld: %zu tokens, %lld carry loss%s\n%s\n", static_cast<long long>(sequence), ids.size(),
                static_cast<long long>(carrying), mask ? " (the others between [[ and ]])" : " (no loss mask)",
                text.c_str());
  }
  return 0;
}

// Character (code point) offset of each byte offset, as Python indexes the rendered string.
int64_t character_offset(const std::string& text, size_t byte_offset) {
  int64_t characters = 0;
  for (size_t i = 0; i < byte_offset && i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++characters;
  }
  return characters;
}

int run_render(const std::vector<std::string>& args) {
  std::string tokenizer_path, template_file, input, loss_on = "assistant";
  bool add_generation_prompt = false;
  core::CommandLine command_line("chunkflow-data render",
                                 "Renders each chat line {\"messages\": [...], ...} of a JSONL file through the model's "
                                 "chat template, as transformers' apply_chat_template(tokenize=False) does, and prints one "
                                 "JSON line per conversation: text, and loss_spans, the [begin, end) character ranges "
                                 "of the text that carries loss (what prepare will train on).");
  command_line.add_string("tokenizer", &tokenizer_path, "the model folder (tokenizer_config.json / chat_template.jinja)", true);
  command_line.add_string("input", &input, "JSONL file of chat lines", true);
  command_line.add_string("chat-template", &template_file, "a Jinja chat template file instead of the model folder's");
  command_line.add_string("loss-on", &loss_on, "assistant (default), last (assistant message) or all");
  command_line.add_flag("add-generation-prompt", &add_generation_prompt, "end with the template's generation prompt");
  if (!command_line.parse(args)) return 0;
  const data::LossOn loss = data::parse_loss_on(loss_on);
  const std::optional<data::ChatTemplate> chat_template = data::ChatTemplate::find(tokenizer_path, template_file);
  CF_CHECK(chat_template.has_value(), tokenizer_path, " has no chat template (chat_template.jinja, or chat_template in "
           "tokenizer_config.json); give one with --chat-template FILE");
  for_each_jsonl_line<nlohmann::ordered_json>(input, [&](const nlohmann::ordered_json& record) {
    const data::ChatTemplate::Rendered rendered = chat_template->render(record, loss, add_generation_prompt);
    nlohmann::json spans = nlohmann::json::array();
    for (const auto& [begin, end] : rendered.loss_spans) {
      spans.push_back({character_offset(rendered.text, begin), character_offset(rendered.text, end)});
    }
    std::printf("%s\n", nlohmann::json{{"text", rendered.text}, {"loss_spans", spans}}.dump().c_str());
  });
  return 0;
}

int run_synth(const std::vector<std::string>& args) {
  data::SynthOptions options;
  std::string output, length_histogram;
  int64_t seed = static_cast<int64_t>(options.seed);
  bool quiet = false;
  core::CommandLine command_line("chunkflow-data synth",
                                 "Writes a synthetic dataset with long-tail lengths (shaped like LMSys-Chat-1M) and a "
                                 "long-range copy structure: BOS, a random span, COPY, the span again. "
                                 "--length-histogram draws the lengths from a published histogram instead "
                                 "(data/distributions/*.txt; format in docs/data.md).");
  command_line.add_string("output", &output, "output prefix", true);
  command_line.add_int("sequences", &options.sequences, "number of sequences");
  command_line.add_int("vocab-size", &options.vocab_size, "vocabulary size (ids 0 and 1 reserved)");
  command_line.add_double("scale", &options.scale, "multiplies all lengths (body median 200 x scale)");
  command_line.add_int("copy-period", &options.copy_period,
                       "0: each sequence repeats its first half; N: a random span of N tokens repeating with period N");
  command_line.add_int("max-length", &options.max_length, "longest possible sequence (built-in shape only)");
  command_line.add_double("tail-fraction", &options.tail_fraction,
                          "share of sequences in the long tail (built-in shape only)");
  command_line.add_string("length-histogram", &length_histogram,
                          "draw lengths from this histogram file (bin LOW HIGH FRACTION lines) instead");
  command_line.add_int("seed", &seed, "random seed");
  command_line.add_flag("quiet", &quiet, "no progress output");
  if (!command_line.parse(args)) return 0;
  CF_CHECK(seed >= 0, "chunkflow-data synth --seed must be >= 0, got ", seed);
  options.seed = static_cast<uint64_t>(seed);
  if (!length_histogram.empty()) {
    const data::SynthOptions defaults;
    CF_CHECK(options.max_length == defaults.max_length && options.tail_fraction == defaults.tail_fraction,
             "chunkflow-data synth: --max-length and --tail-fraction shape only the built-in lengths; with "
             "--length-histogram the bins set them (edit the file, or use --scale)");
    options.length_histogram = data::read_length_histogram(length_histogram);
  }
  const data::SynthSummary summary = data::write_synthetic_dataset(output, options, !quiet);
  std::printf("wrote %s.bin/.idx: %lld sequences, %lld tokens, longest %lld\n", output.c_str(),
              static_cast<long long>(summary.sequences), static_cast<long long>(summary.tokens),
              static_cast<long long>(summary.max_length));
  return 0;
}

int run_stats(const std::vector<std::string>& args) {
  std::string prefix, loss_mask, svg_path;
  configs::DataConfig batching;
  batching.batch_tokens = 0;
  data::ComparisonOptions options;
  int64_t seed = static_cast<int64_t>(options.seed), show_plan = 0;
  core::CommandLine command_line("chunkflow-data stats",
                                 "Prints the length distribution and, for one epoch of global batches, how many "
                                 "chunks ChunkFlow needs and how full they are next to pad-to-longest and "
                                 "pack-to-max-length batching.");
  command_line.add_string("data", &prefix, "dataset prefix", true);
  command_line.add_string("loss-mask", &loss_mask, "loss-mask dataset prefix (default: <data>_loss_mask if present)");
  command_line.add_int("chunk-size", &options.chunk_size, "ChunkFlow chunk size");
  command_line.add_int("batch-tokens", &batching.batch_tokens, "global batch token budget (default 65536)");
  command_line.add_int("batch-sequences", &batching.batch_sequences, "global batch sequence count instead");
  command_line.add_int("micro-batch-sequences", &options.micro_batch_sequences, "pad-to-longest micro-batch size");
  command_line.add_int("max-context", &options.max_context, "pack-to-max-length row size (default: longest)");
  command_line.add_int("seed", &seed, "sampler seed");
  command_line.add_string("svg", &svg_path, "write the length histogram as an SVG picture here");
  command_line.add_int("show-plan", &show_plan, "print the first global batch's plan, up to N chunks");
  if (!command_line.parse(args)) return 0;
  if (batching.batch_sequences == 0 && batching.batch_tokens == 0) batching.batch_tokens = 65536;
  CF_CHECK(batching.batch_sequences == 0 || batching.batch_tokens == 0,
           "chunkflow-data stats: give --batch-tokens or --batch-sequences, not both");
  CF_CHECK(seed >= 0, "chunkflow-data stats --seed must be >= 0, got ", seed);
  options.seed = static_cast<uint64_t>(seed);

  const data::IndexedDataset dataset(prefix);
  const data::LengthSummary lengths = data::summarize_lengths(dataset.lengths());
  std::printf("dataset %s: %lld sequences in %lld documents, %lld tokens (%s), dtype %s\n", prefix.c_str(),
              static_cast<long long>(lengths.sequences), static_cast<long long>(dataset.documents()),
              static_cast<long long>(lengths.tokens), core::format_count(static_cast<double>(lengths.tokens)).c_str(),
              data::dtype_name(dataset.dtype()));
  std::printf("length: min %lld, mean %.1f, p50 %lld, p90 %lld, p99 %lld, p99.9 %lld, max %lld; %.2f%% below 4096\n\n",
              static_cast<long long>(lengths.min), lengths.mean, static_cast<long long>(lengths.p50),
              static_cast<long long>(lengths.p90), static_cast<long long>(lengths.p99),
              static_cast<long long>(lengths.p999), static_cast<long long>(lengths.max), 100.0 * lengths.share_below_4k);
  const auto bins = data::length_histogram(dataset.lengths());
  std::printf("%s\n", data::histogram_text(bins).c_str());

  if (loss_mask.empty() && core::path_exists(data::idx_path(data::loss_mask_prefix(prefix)))) {
    loss_mask = data::loss_mask_prefix(prefix);
  }
  if (!loss_mask.empty()) {
    const data::LossMaskDataset mask(loss_mask, dataset);
    int64_t targets = 0;
    for (int64_t s = 0; s < dataset.size(); ++s) {
      const std::vector<uint8_t> values = mask.read(s);
      data::PlanSequence sequence{static_cast<int64_t>(values.size()), values};
      targets += data::count_loss_tokens(sequence, 0, sequence.length);
    }
    std::printf("loss mask %s: %lld of %lld tokens are prediction targets (%.1f%%)\n\n", loss_mask.c_str(),
                static_cast<long long>(targets), static_cast<long long>(lengths.tokens),
                lengths.tokens ? 100.0 * static_cast<double>(targets) / static_cast<double>(lengths.tokens) : 0.0);
  }

  const data::PackingComparison comparison = data::compare_batching(dataset.lengths(), batching, options);
  std::printf("%s", comparison.to_text().c_str());

  if (show_plan > 0) {
    data::GlobalBatchSampler sampler(dataset.lengths(), batching, options.seed);
    const data::GlobalBatch batch = sampler.next();
    std::vector<data::PlanSequence> sequences;
    for (const int64_t s : batch.sequences) sequences.push_back({dataset.length(s), {}});
    std::printf("\nfirst global batch:\n%s", data::build_chunk_plan(sequences, options.chunk_size).describe(show_plan).c_str());
  }
  if (!svg_path.empty()) {
    const auto parent = std::filesystem::path(svg_path).parent_path();
    if (!parent.empty()) core::make_directories(parent.string());
    core::write_file_atomic(svg_path, data::histogram_svg(bins, "Sequence lengths of " + prefix));
    std::printf("\nwrote %s\n", svg_path.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace chunkflow

int main(int argc, char** argv) {
  using namespace chunkflow;
  const std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty() || all[0] == "--help" || all[0] == "-h") {
    std::fputs(kUsage, all.empty() ? stderr : stdout);
    return all.empty() ? 2 : 0;
  }
  const std::vector<std::string> args(all.begin() + 1, all.end());
  try {
    if (all[0] == "prepare") return run_prepare(args);
    if (all[0] == "synth") return run_synth(args);
    if (all[0] == "stats") return run_stats(args);
    if (all[0] == "tokenize") return run_tokenize(args);
    if (all[0] == "show") return run_show(args);
    if (all[0] == "render") return run_render(args);
    CF_FAIL("chunkflow-data: unknown command '", all[0], "'",
            core::did_you_mean(all[0], {"prepare", "synth", "stats", "tokenize", "show", "render"}), "\n", kUsage);
  } catch (const core::Error& error) {
    core::log_error(error.what());
    return 1;
  } catch (const std::exception& error) {
    core::log_error("chunkflow-data: unexpected failure: ", error.what());
    return 1;
  }
}
