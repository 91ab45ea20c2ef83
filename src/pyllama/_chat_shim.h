// pyllama: thin C++17 shim over llama.cpp's `common` chat library.
//
// Everything crossing this boundary is a std::string (JSON text where structured),
// so the Cython side needs no llama.cpp `common` types. Errors are C++ exceptions:
//   std::invalid_argument -> Python ValueError   (bad request / schema / template)
//   std::runtime_error    -> Python RuntimeError (everything else)
#pragma once

#include <memory>
#include <string>

struct llama_model;

namespace pyllama {

class ChatTemplates {
  public:
    // model:             may be nullptr only when template_override is non-empty
    //                    (bos/eos tokens are then empty strings and add_bos/add_eos false).
    // template_override: "" = the model's own template from the GGUF (chatml if it has none);
    //                    "chatml" or a full Jinja template string -> Jinja path;
    //                    another built-in llama.cpp template NAME (e.g. "llama3") -> legacy
    //                    llama_chat_apply_template path (no tools, content-only parsing).
    // Throws std::invalid_argument if the template fails to parse.
    ChatTemplates(const llama_model * model, const std::string & template_override);
    ~ChatTemplates();

    ChatTemplates(const ChatTemplates &)             = delete;
    ChatTemplates & operator=(const ChatTemplates &) = delete;

    // variant "" = default template, "tool_use" = tool-use template ("" if absent)
    std::string source(const std::string & variant) const;

    // JSON object of template capabilities (see _chat_shim.cpp for the keys)
    std::string caps_json() const;

    // OpenAI-style request JSON in, rendered prompt + grammar + parse syntax JSON out
    std::string render(const std::string & request_json) const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl;
};

// Parse model output produced under a render() result; syntax_json is render()'s "syntax"
// value verbatim. is_partial=true for a streaming prefix (never throws on a parse failure then).
// Returns {"role":"assistant","content":str,"reasoning_content":str,
//          "tool_calls":[{"id":str,"name":str,"arguments":str}]}
std::string chat_parse(const std::string & text, bool is_partial, const std::string & syntax_json);

// JSON schema -> GBNF grammar. Throws std::invalid_argument on an invalid schema.
std::string json_schema_to_gbnf(const std::string & schema_json);

}  // namespace pyllama
