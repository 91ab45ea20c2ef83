// pyllama: thin C++17 shim over llama.cpp's `common` chat library (chat.h, peg-parser.h,
// json-schema-to-grammar.h). It calls the library the way llama-server does
// (tools/server/server-common.cpp: oaicompat_chat_params_parse, server-schema.cpp: the
// chat parser params, server-task.cpp: common_chat_parse), with JSON strings at the boundary.

#include "_chat_shim.h"

#include "chat.h"
#include "common.h"
#include "json-schema-to-grammar.h"
#include "json.h"
#include "llama.h"
#include "peg-parser.h"

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using json = common_json;

namespace pyllama {

namespace {

// ---------------------------------------------------------------------------
// small JSON helpers; a wrong type in the request is a bad argument
// ---------------------------------------------------------------------------

json parse_json_arg(const std::string & text, const char * what) {
    try {
        return json::parse(text);
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string(what) + " is not valid JSON: " + e.what());
    }
}

bool has_value(const json & obj, const char * key) {
    return obj.contains(key) && !obj.at(key).is_null();
}

bool opt_bool(const json & obj, const char * key, bool def) {
    if (!has_value(obj, key)) {
        return def;
    }
    const json & v = obj.at(key);
    if (!v.is_boolean()) {
        throw std::invalid_argument(std::string("\"") + key + "\" must be a boolean, got " + v.dump());
    }
    return v.get<bool>();
}

std::string opt_string(const json & obj, const char * key, const std::string & def) {
    if (!has_value(obj, key)) {
        return def;
    }
    const json & v = obj.at(key);
    if (!v.is_string()) {
        throw std::invalid_argument(std::string("\"") + key + "\" must be a string, got " + v.dump());
    }
    return v.get<std::string>();
}

const char * grammar_trigger_type_name(common_grammar_trigger_type type) {
    switch (type) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:        return "token";
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD:         return "word";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:      return "pattern";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: return "pattern_full";
    }
    return "unknown";
}

bool is_legacy_builtin_name(const std::string & name) {
    // "chatml" is handled by common_chat_templates_init itself (Jinja chatml); every other
    // built-in name only works through llama_chat_apply_template (llama-server --no-jinja).
    if (name.empty() || name == "chatml") {
        return false;
    }
    const int32_t n = llama_chat_builtin_templates(nullptr, 0);
    if (n <= 0) {
        return false;
    }
    std::vector<const char *> names((size_t) n, nullptr);
    llama_chat_builtin_templates(names.data(), names.size());
    for (const char * s : names) {
        if (s != nullptr && name == s) {
            return true;
        }
    }
    return false;
}

// common_chat_templates_init rethrows a sliced std::exception on a parse failure, so the
// message is lost; parse the source again only to recover it.
std::string template_parse_error(const std::string & src) {
    try {
        jinja::lexer lexer;
        auto         tokens = lexer.tokenize(src);
        jinja::parse_from_tokens(tokens);
    } catch (const std::exception & e) {
        return e.what();
    }
    return "unknown error";
}

json msg_to_json(const common_chat_msg & msg) {
    json out = json::object();
    out["role"]              = msg.role.empty() ? std::string("assistant") : msg.role;
    out["content"]           = msg.content.empty() && !msg.content_parts.empty() ? msg.render_content() : msg.content;
    out["reasoning_content"] = msg.reasoning_content;
    json calls               = json::array();
    for (const auto & tc : msg.tool_calls) {
        json call        = json::object();
        call["id"]        = tc.id;
        call["name"]      = tc.name;
        call["arguments"] = tc.arguments;
        calls.push_back(call);
    }
    out["tool_calls"] = calls;
    return out;
}

// ---------------------------------------------------------------------------
// syntax (common_chat_parser_params) <-> JSON, with a small cache of deserialized parsers
// ---------------------------------------------------------------------------

common_chat_parser_params syntax_from_json(const std::string & syntax_json) {
    json s = parse_json_arg(syntax_json, "syntax");
    if (!s.is_object()) {
        throw std::invalid_argument("syntax must be a JSON object (render()'s \"syntax\" value)");
    }
    common_chat_parser_params p;
    if (has_value(s, "format")) {
        if (!s.at("format").is_number_integer()) {
            throw std::invalid_argument("syntax.format must be an integer");
        }
        const int fmt = s.at("format").get<int>();
        if (fmt < 0 || fmt >= (int) COMMON_CHAT_FORMAT_COUNT) {
            throw std::invalid_argument("syntax.format out of range: " + std::to_string(fmt));
        }
        p.format = (common_chat_format) fmt;
    }
    try {
        p.reasoning_format = common_reasoning_format_from_name(opt_string(s, "reasoning_format", "none"));
    } catch (const std::invalid_argument &) {
        throw;
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string("syntax.reasoning_format: ") + e.what());
    }
    p.reasoning_in_content = opt_bool(s, "reasoning_in_content", false);
    p.generation_prompt    = opt_string(s, "generation_prompt", "");
    p.parse_tool_calls     = opt_bool(s, "parse_tool_calls", true);
    p.is_continuation      = opt_bool(s, "is_continuation", false);
    p.echo                 = opt_bool(s, "echo", false);
    p.debug                = opt_bool(s, "debug", false);
    const std::string parser = opt_string(s, "parser", "");
    if (!parser.empty()) {
        try {
            p.parser.load(parser);
        } catch (const std::exception & e) {
            throw std::invalid_argument(std::string("syntax.parser could not be loaded: ") + e.what());
        }
    }
    return p;
}

std::shared_ptr<const common_chat_parser_params> syntax_cached(const std::string & syntax_json) {
    // A stream calls chat_parse once per token with the same syntax; loading the PEG arena
    // from JSON each time would dominate, so keep the last few deserialized ones.
    static std::mutex mtx;
    static std::deque<std::pair<std::string, std::shared_ptr<const common_chat_parser_params>>> cache;
    static const size_t max_entries = 8;
    {
        std::lock_guard<std::mutex> lock(mtx);
        for (auto it = cache.begin(); it != cache.end(); ++it) {
            if (it->first == syntax_json) {
                auto hit = it->second;
                if (it != cache.begin()) {
                    auto entry = std::move(*it);
                    cache.erase(it);
                    cache.push_front(std::move(entry));
                }
                return hit;
            }
        }
    }
    auto params = std::make_shared<const common_chat_parser_params>(syntax_from_json(syntax_json));
    std::lock_guard<std::mutex> lock(mtx);
    cache.emplace_front(syntax_json, params);
    while (cache.size() > max_entries) {
        cache.pop_back();
    }
    return params;
}

}  // namespace

// ---------------------------------------------------------------------------
// ChatTemplates
// ---------------------------------------------------------------------------

struct ChatTemplates::Impl {
    common_chat_templates_ptr   tmpls;
    bool                        use_jinja         = true;   // false: legacy built-in template name
    bool                        supports_thinking = false;  // as llama-server computes it at load
    std::map<std::string, bool> caps;
};

ChatTemplates::ChatTemplates(const llama_model * model, const std::string & template_override) :
    impl(new Impl()) {
    if (model == nullptr && template_override.empty()) {
        // common_chat_templates_init would GGML_ASSERT (abort) here
        throw std::invalid_argument("a chat template override is required when no model is given");
    }
    impl->use_jinja = !is_legacy_builtin_name(template_override);

    try {
        impl->tmpls = common_chat_templates_init(model, template_override);
    } catch (const std::exception &) {
        std::string src = template_override;
        if (src.empty() && model != nullptr) {
            const char * s = llama_model_chat_template(model, nullptr);
            src            = s ? s : "";
        }
        throw std::invalid_argument("failed to parse chat template: " + template_parse_error(src));
    }
    if (!impl->tmpls) {
        throw std::runtime_error("failed to initialize chat templates");
    }

    if (impl->use_jinja) {
        impl->caps = common_chat_templates_get_caps(impl->tmpls.get());
        try {
            impl->supports_thinking = common_chat_templates_support_enable_thinking(impl->tmpls.get());
        } catch (const std::exception &) {
            // render() will report the problem with this template, if it is a real one
            impl->supports_thinking = false;
        }
    } else {
        // the legacy C++ formatter: plain string content, system role handled by llama.cpp
        impl->caps = common_chat_templates_get_caps(impl->tmpls.get());
        for (auto & kv : impl->caps) {
            kv.second = false;
        }
        impl->caps["supports_string_content"] = true;
        impl->caps["supports_system_role"]    = true;
    }
}

ChatTemplates::~ChatTemplates() = default;

std::string ChatTemplates::source(const std::string & variant) const {
    if (!variant.empty() && variant != "tool_use") {
        return "";  // no such variant (common_chat_templates_source would fall back to the default)
    }
    return common_chat_templates_source(impl->tmpls.get(), variant);
}

std::string ChatTemplates::caps_json() const {
    json out = json::object();
    for (const auto & kv : impl->caps) {
        out[kv.first] = kv.second;
    }
    out["supports_thinking"]     = impl->supports_thinking;
    out["has_tool_use_template"] = !common_chat_templates_source(impl->tmpls.get(), "tool_use").empty();
    out["was_explicit"]          = common_chat_templates_was_explicit(impl->tmpls.get());
    out["jinja"]                 = impl->use_jinja;
    return out.dump();
}

std::string ChatTemplates::render(const std::string & request_json) const {
    json body = parse_json_arg(request_json, "request");
    if (!body.is_object()) {
        throw std::invalid_argument("request must be a JSON object");
    }

    // --- tools / tool_choice ---
    json tools = body.contains("tools") ? body.at("tools") : json();
    if (!tools.is_null() && !tools.is_array()) {
        throw std::invalid_argument("\"tools\" must be an array");
    }
    const bool has_tools = tools.is_array() && !tools.empty();

    std::string tool_choice = "auto";
    std::string forced_function;  // tool_choice {"type":"function","function":{"name":...}}
    if (has_value(body, "tool_choice")) {
        const json & tc = body.at("tool_choice");
        if (tc.is_string()) {
            tool_choice = tc.get<std::string>();
        } else if (tc.is_object()) {
            const std::string type = opt_string(tc, "type", "");
            if (type == "function") {
                const json fn    = tc.contains("function") ? tc.at("function") : json();
                forced_function  = fn.is_object() ? opt_string(fn, "name", "") : std::string();
                if (forced_function.empty()) {
                    throw std::invalid_argument("tool_choice of type \"function\" needs function.name");
                }
                tool_choice = "required";
            } else if (type == "auto" || type == "none" || type == "required") {
                tool_choice = type;
            } else {
                throw std::invalid_argument("invalid tool_choice: " + tc.dump());
            }
        } else {
            throw std::invalid_argument("\"tool_choice\" must be a string or an object");
        }
    }

    // --- json_schema / grammar / response_format ---
    json        json_schema = body.contains("json_schema") ? body.at("json_schema") : json();
    std::string grammar     = opt_string(body, "grammar", "");
    if (!json_schema.is_null() && !grammar.empty()) {
        throw std::invalid_argument("Cannot use both json_schema and grammar");
    }
    if (has_value(body, "response_format")) {
        const json & rf = body.at("response_format");
        if (!rf.is_object()) {
            throw std::invalid_argument("\"response_format\" must be an object");
        }
        const std::string type = opt_string(rf, "type", "");
        if (type == "json_object") {
            if (rf.contains("schema") || json_schema.empty()) {
                json_schema = rf.value("schema", json::object());
            }
        } else if (type == "json_schema") {
            const json wrapper = rf.value("json_schema", json::object());
            json_schema        = wrapper.is_object() ? wrapper.value("schema", json::object()) : json::object();
        } else if (!type.empty() && type != "text") {
            throw std::invalid_argument(
                "response_format type must be one of \"text\", \"json_object\" or \"json_schema\", but got: " + type);
        }
    }
    if (json_schema.is_object() && json_schema.empty()) {
        json_schema["type"] = "object";  // an empty schema means any object
    }
    std::string schema_grammar;
    if (!json_schema.is_null()) {
        if (!grammar.empty()) {
            throw std::invalid_argument("Cannot use both json_schema and grammar");
        }
        // validate up front so a bad schema is a ValueError, whichever path uses it
        try {
            schema_grammar = json_schema_to_grammar(json_schema);
        } catch (const std::exception & e) {
            throw std::invalid_argument(std::string("\"json_schema\": ") + e.what());
        }
    }

    // --- messages ---
    if (!body.contains("messages")) {
        throw std::invalid_argument("'messages' is required");
    }
    const json & messages = body.at("messages");
    if (!messages.is_array()) {
        throw std::invalid_argument("Expected 'messages' to be an array");
    }
    for (const auto & msg : messages) {
        if (!msg.is_object()) {
            throw std::invalid_argument("Expected each message to be an object, got " + msg.dump());
        }
        const std::string role = opt_string(msg, "role", "");
        if (role != "assistant" && !msg.contains("content")) {
            throw std::invalid_argument("All non-assistant messages must contain 'content'");
        }
        if (role == "assistant" && !msg.contains("content") && !msg.contains("tool_calls")) {
            throw std::invalid_argument("Assistant message must contain either 'content' or 'tool_calls'!");
        }
    }

    common_chat_templates_inputs inputs;
    try {
        inputs.messages = common_chat_msgs_parse_oaicompat(messages);
    } catch (const std::exception & e) {
        throw std::invalid_argument(e.what());
    }
    try {
        inputs.tools = common_chat_tools_parse_oaicompat(tools);
    } catch (const std::exception & e) {
        throw std::invalid_argument(e.what());
    }
    try {
        inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(tool_choice);
    } catch (const std::exception & e) {
        throw std::invalid_argument(e.what());
    }
    if (!forced_function.empty()) {
        std::vector<common_chat_tool> selected;
        for (const auto & t : inputs.tools) {
            if (t.name == forced_function) {
                selected.push_back(t);
            }
        }
        if (selected.empty()) {
            throw std::invalid_argument("tool_choice names function \"" + forced_function +
                                        "\", which is not among the tools");
        }
        inputs.tools = std::move(selected);
    }

    inputs.use_jinja   = impl->use_jinja;
    inputs.json_schema = json_schema.is_null() ? "" : json_schema.dump();
    inputs.grammar     = grammar;
    inputs.parallel_tool_calls =
        opt_bool(body, "parallel_tool_calls", impl->caps.count("supports_parallel_tool_calls") &&
                                                  impl->caps.at("supports_parallel_tool_calls"));
    inputs.add_generation_prompt = opt_bool(body, "add_generation_prompt", true);
    inputs.continue_final_message = has_value(body, "continue_final_message") ?
                                        common_chat_continuation_parse(body.at("continue_final_message")) :
                                        COMMON_CHAT_CONTINUATION_NONE;
    if (inputs.continue_final_message == COMMON_CHAT_CONTINUATION_NONE && opt_bool(body, "prefill_assistant", true) &&
        !inputs.messages.empty() && inputs.messages.back().role == "assistant") {
        if (inputs.messages.size() >= 2 && inputs.messages[inputs.messages.size() - 2].role == "assistant") {
            throw std::invalid_argument("Cannot have 2 or more assistant messages at the end of the list.");
        }
        inputs.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        inputs.add_generation_prompt  = false;
    }
    if (inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && inputs.add_generation_prompt) {
        throw std::invalid_argument("Cannot set both add_generation_prompt and continue_final_message to true.");
    }
    if (inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && !inputs.messages.empty() &&
        inputs.messages.back().role == "assistant" && !inputs.messages.back().tool_calls.empty()) {
        throw std::invalid_argument("Cannot continue an assistant message that contains tool calls.");
    }

    inputs.reasoning_format = COMMON_REASONING_FORMAT_DEEPSEEK;  // common_params / llama-server default
    if (has_value(body, "reasoning_format")) {
        try {
            inputs.reasoning_format = common_reasoning_format_from_name(opt_string(body, "reasoning_format", ""));
        } catch (const std::invalid_argument &) {
            throw;
        } catch (const std::exception & e) {
            throw std::invalid_argument(e.what());
        }
    }
    // llama-server: thinking is on unless disabled, and only if the template supports it
    inputs.enable_thinking = opt_bool(body, "enable_thinking", true) && impl->supports_thinking;

    bool parse_tool_calls = true;  // common_chat_parser_params default, also what llama-server sets
    if (!inputs.tools.empty() && inputs.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE) {
        if (!grammar.empty()) {
            throw std::invalid_argument("Cannot use custom grammar constraints with tools.");
        }
        parse_tool_calls = true;
    }

    if (has_value(body, "chat_template_kwargs")) {
        const json & kwargs = body.at("chat_template_kwargs");
        if (!kwargs.is_object()) {
            throw std::invalid_argument("\"chat_template_kwargs\" must be an object");
        }
        for (const auto & item : kwargs.items()) {
            inputs.chat_template_kwargs[item.key()] = item.value().dump();
        }
    }
    {
        auto it = inputs.chat_template_kwargs.find("enable_thinking");
        if (it != inputs.chat_template_kwargs.end()) {
            if (it->second == "true") {
                inputs.enable_thinking = true;
            } else if (it->second == "false") {
                inputs.enable_thinking = false;
            } else if (!it->second.empty() && it->second[0] == '"') {
                throw std::invalid_argument("invalid type for \"enable_thinking\" (expected boolean, got string)");
            }
        }
    }
    if (has_value(body, "reasoning_effort")) {
        const std::string effort = opt_string(body, "reasoning_effort", "");
        if (effort == "none") {
            inputs.enable_thinking = false;
            inputs.chat_template_kwargs.erase("reasoning_effort");
        } else if (!effort.empty()) {
            inputs.chat_template_kwargs["reasoning_effort"] = json::make(effort).dump();
        }
    }
    inputs.force_pure_content = opt_bool(body, "force_pure_content", false);
    if (!impl->use_jinja) {
        if (has_tools) {
            throw std::invalid_argument("tools need a Jinja chat template (built-in template names do not support them)");
        }
        if (tool_choice != "auto") {
            throw std::invalid_argument("tool_choice needs a Jinja chat template");
        }
    }

    // --- apply ---
    common_chat_params chat_params;
    try {
        chat_params = common_chat_templates_apply(impl->tmpls.get(), inputs);
    } catch (const std::invalid_argument &) {
        throw;
    } catch (const jinja::raised_exception & e) {
        throw std::invalid_argument(std::string("chat template raised an exception: ") + e.what());
    } catch (const jinja::rethrown_exception & e) {
        throw std::invalid_argument(std::string("chat template failed: ") + e.what());
    } catch (const std::runtime_error &) {
        throw;
    } catch (const std::exception & e) {
        throw std::runtime_error(std::string("chat template failed: ") + e.what());
    }

    // --- output, the fields llama-server puts into llama_params ---
    json out = json::object();
    out["prompt"] = chat_params.prompt;

    std::string out_grammar;
    std::string grammar_type;
    bool        grammar_prefill = false;
    if (!chat_params.grammar.empty()) {
        out_grammar = chat_params.grammar;
        if (impl->use_jinja) {
            grammar_type = "tool_calls";  // llama-server marks chat template grammars so
            // A template grammar starts with the generation prompt: common_sampler feeds the
            // generation prompt's tokens to a non-lazy grammar sampler before sampling.
            grammar_prefill = !chat_params.grammar_lazy && !chat_params.generation_prompt.empty();
        } else {
            grammar_type = json_schema.is_null() ? "user" : "output_format";
        }
    } else if (!json_schema.is_null()) {
        out_grammar  = schema_grammar;
        grammar_type = "output_format";
    } else if (!grammar.empty()) {
        out_grammar  = grammar;
        grammar_type = "user";
    }
    out["grammar"]      = out_grammar;
    out["grammar_type"]    = grammar_type;
    out["grammar_prefill"] = grammar_prefill;
    out["grammar_lazy"] = chat_params.grammar_lazy;

    json triggers = json::array();
    for (const auto & t : chat_params.grammar_triggers) {
        json jt         = json::object();
        jt["type"]      = (int) t.type;
        jt["type_name"] = grammar_trigger_type_name(t.type);
        jt["value"]     = t.value;
        jt["token"]     = (int) (t.type == COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN ? t.token : LLAMA_TOKEN_NULL);
        triggers.push_back(jt);
    }
    out["grammar_triggers"]   = triggers;
    out["preserved_tokens"]   = chat_params.preserved_tokens;
    out["additional_stops"]   = chat_params.additional_stops;
    out["format"]             = (int) chat_params.format;
    out["format_name"]        = common_chat_format_name(chat_params.format);
    out["generation_prompt"]  = chat_params.generation_prompt;
    out["supports_thinking"]  = chat_params.supports_thinking;
    out["thinking_start_tag"] = chat_params.thinking_start_tag;
    out["thinking_end_tags"]  = chat_params.thinking_end_tags;
    out["message_delimiters"] = chat_params.message_delimiters.to_json();
    out["enable_thinking"]    = inputs.enable_thinking;
    out["reasoning_format"]   = common_reasoning_format_name(inputs.reasoning_format);
    out["parse_tool_calls"]   = parse_tool_calls;
    out["is_continuation"]    = inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE;

    // everything common_chat_parse needs (llama-server: server-schema.cpp chat parser params)
    const bool stream = opt_bool(body, "stream", false);
    json syntax       = json::object();
    syntax["format"]               = (int) chat_params.format;
    syntax["format_name"]          = common_chat_format_name(chat_params.format);
    syntax["reasoning_format"]     = common_reasoning_format_name(inputs.reasoning_format);
    syntax["reasoning_in_content"] = stream && inputs.reasoning_format == COMMON_REASONING_FORMAT_DEEPSEEK_LEGACY;
    syntax["generation_prompt"]    = chat_params.generation_prompt;
    syntax["parse_tool_calls"]     = parse_tool_calls;
    syntax["is_continuation"]      = inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE;
    syntax["echo"]                 = opt_bool(body, "echo", false);
    syntax["parser"]               = chat_params.parser;  // serialized common_peg_arena (JSON text)
    out["syntax"]                  = syntax;

    return out.dump();
}

// ---------------------------------------------------------------------------
// free functions
// ---------------------------------------------------------------------------

std::string chat_parse(const std::string & text, bool is_partial, const std::string & syntax_json) {
    const auto      params = syntax_cached(syntax_json);
    common_chat_msg msg;
    try {
        msg = common_chat_parse(text, is_partial, *params);
    } catch (const std::exception & e) {
        if (!is_partial) {
            throw std::runtime_error(e.what());
        }
        // a streaming prefix that does not parse yet: nothing parsed so far
        // (llama-server skips an empty parse result, keeping the previous message)
        msg = common_chat_msg();
    }
    msg.role = "assistant";
    return msg_to_json(msg).dump_safe();
}

std::string json_schema_to_gbnf(const std::string & schema_json) {
    json schema = parse_json_arg(schema_json, "schema");
    try {
        return json_schema_to_grammar(schema, /* force_gbnf= */ true);
    } catch (const std::exception & e) {
        throw std::invalid_argument(e.what());
    }
}

}  // namespace pyllama
