#!/usr/bin/env python3
"""Chat templates: ChunkFlow's Jinja engine and chat-line preparation against transformers.

1. Jinja conformance: about a hundred small templates (whitespace control under trim_blocks and
   lstrip_blocks, scoping, loops, macros, filters, tests, Python formatting of values, string
   methods on Unicode text, slices) rendered by `chunkflow-data render` and by transformers' own
   chat-template environment (`_compile_jinja_template`), compared character for character; the
   templates that make Jinja raise must make ChunkFlow fail too.
2. Chat data: three templates written for this test (ChatML-style with tools and a default
   system prompt, Llama-3-style with headers, BOS and a date, and one with {% generation %}
   blocks) over an offline tokenizer; `chunkflow-data prepare` must write exactly
   `AutoTokenizer.apply_chat_template(..., tokenize=True)`'s ids. Loss masks: with generation
   blocks, equal to transformers' assistant_masks; without (incremental rendering), equal to the
   assistant_masks transformers computes for the same template with generation blocks around each
   assistant message's content and end-of-turn tokens. Also --loss-on last / all, 1 and 3
   threads, and refusals (a template that raises, an unsupported filter, a conversation without
   an assistant turn, a template that rewrites earlier turns).

    chat_template_test.py CHUNKFLOW_DATA
"""
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe_tokenizer_test import build, read_dataset  # noqa: E402

from transformers import AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  Hi there, what's 2+2?  "},
    {"role": "assistant", "content": "4.\nAnything else?"},
    {"role": "user", "content": "Café ✓ 😀 naïve"},
]

# (template, extra variables). Each renders with messages=MESSAGES, tools=None, documents=None,
# add_generation_prompt=False plus the extras.
CASES = [
    # whitespace control
    ("a\n{% if true %}\n  b\n{% endif %}\nc\n", {}),
    ("a\n    {% if true %}\n  b\n    {% endif %}\nc", {}),
    ("a  {% if true %}b{% endif %}  c", {}),
    ("a\n  {%- if true -%}\n  b\n  {%- endif -%}  \n c", {}),
    ("a\n  {%+ if true %}b{% endif %}\n", {}),
    ("x {{- ' y ' -}} z\n\n", {}),
    ("x\n  {{ 'y' }}\n  {# comment #}\n  z", {}),
    ("{# a comment\nover lines #}\nafter", {}),
    ("a {#- trimmed -#}   b", {}),
    ("line1\r\nline2\r\n{% if true %}\r\nx\r\n{% endif %}\r\n", {}),
    ("{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n", {}),
    ("\t{% set x = 1 %}\n{{ x }}", {}),
    ("{% if true %}  \n  y{% endif %}", {}),
    ("a{% if true %}\n\n{% endif %}b", {}),
    ("{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("  {%- for i in range(3) %}\n    {{ i }}\n  {%- endfor %}", {}),
    # expressions, precedence, Python values
    ("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }}", {}),
    ("{{ 7 / 2 }} {{ 6 / 2 }} {{ 1 / 3 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }}", {}),
    ("{{ 3.0 }} {{ -0.5 }} {{ 2.5e-8 }} {{ 123456789.125 }} {{ 1.5 * 2 }}", {}),
    ("{{ none }} {{ true }} {{ false }} {{ None }} {{ True and 'x' }} {{ 0 or 'y' }} {{ '' or [] }}", {}),
    ("{{ [1, 'a', none, true, 2.5] }} {{ ('x',) }} {{ (1, 2) }} {{ {'k': 'v', 'n': [1]} }}", {}),
    ("{{ \"it's\" }} {{ ['it\\'s', 'say \"hi\"', 'both \\' \"', 'tab\\there', 'nl\\n', 'uni é ✓'] }}", {}),
    ("{{ 'a' ~ 1 ~ none ~ true }} {{ 'x' + 'y' }} {{ [1] + [2] }} {{ 'ab' * 3 }} {{ 2 * [0] }}", {}),
    ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }} {{ [1, 2] == [1, 2] }}", {}),
    ("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ not 1 in [1] }}", {}),
    ("{{ 'yes' if messages else 'no' }} {{ 'a' if false }}|{{ 'x' if 0 else 'y' if 1 else 'z' }}", {}),
    ("{{ -3 }} {{ -(2 + 1) }} {{ - 2 ** 2 }} {{ +4 }} {{ 10 - 2 - 3 }} {{ 2 ** 3 ** 2 }}", {}),
    ("{{ 'abc' 'def' }} {{ \"\\u00e9\\x41\\n\" }}|{{ 'a\\\\b' }}", {}),
    # attributes, items, slices
    ("{{ messages[0].role }} {{ messages[0]['content'] }} {{ messages[-1].role }} {{ messages | length }}", {}),
    ("{{ messages[1:3] | length }} {{ messages[::-1][0].role }} {{ 'hello'[1:4] }} {{ 'hello'[::-1] }} {{ 'hello'[-2:] }}", {}),
    ("{{ [1,2,3,4,5][::2] }} {{ [1,2,3,4,5][4:1:-1] }} {{ [1,2,3][5:] }} {{ 'héllo'[1] }} {{ 'abc'[10] }}|", {}),
    ("{{ messages[0].missing }}|{{ messages[0].missing is defined }}|{{ messages[9] is defined }}", {}),
    ("{{ messages[0].items() | list | length }} {{ messages[0].keys() | list }} {{ messages[0].get('role') }} {{ messages[0].get('x', 'd') }}", {}),
    ("{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}", {}),
    ("{{ obj.a.b }} {{ obj['a']['b'] }} {{ obj.list.0 }} {{ obj.list[1] }}", {"obj": {"a": {"b": 5}, "list": [7, 8]}}),
    # tests
    ("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ none is none }} {{ x is string }} {{ 1 is number }}", {"x": "s"}),
    ("{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ {} is mapping }} {{ [] is iterable }}", {}),
    ("{{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ false is false }} {{ x is sameas none }} {{ 1 is not string }}", {"x": None}),
    ("{{ 'a' is eq 'a' }} {{ 2 is gt 1 }} {{ 2 is lt(1) }} {{ 2 is ge 2 }} {{ 'x' is in ['x'] }} {{ 'ABC' is upper }} {{ 'abc' is lower }}", {}),
    ("{{ messages[0] is mapping and messages[0].role == 'system' }} {{ range is callable }}", {}),
    # filters
    ("{{ '  x y  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ ' \\u3000 wide\\u00a0 ' | trim }}|", {}),
    ("{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }} {{ [3, 1] | sort(reverse=true) }}", {}),
    ("{{ messages | map(attribute='role') | join(', ') }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }}", {}),
    ("{{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | list }} {{ [0, 1, '', 'a'] | select | list }}", {}),
    ("{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3] | reject('gt', 1) | list }} {{ ['a', 'b'] | map('upper') | list }}", {}),
    ("{{ [1, 2] | first }} {{ [1, 2] | last }} {{ [] | first is defined }} {{ 'abc' | first }} {{ 'abc' | length }} {{ {'a': 1} | length }}", {}),
    ("{{ x | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ none | d('n') }}", {}),
    ("{{ 'Hello World' | lower }} {{ 'hello world' | upper }} {{ 'hello wORLD' | title }} {{ 'hELLO' | capitalize }}", {}),
    ("{{ '3' | int + 1 }} {{ '3.7' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ '2.5' | float }} {{ 3 | float }} {{ 3.9 | int }}", {}),
    ("{{ [1, 2, 3] | sum }} {{ [1.5, 2] | sum }} {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ -3 | abs }} {{ [1, 1, 2] | unique | list }}", {}),
    ("{{ ['A', 'a', 'b'] | unique | list }} {{ [1, 2, 3] | reverse | list }} {{ 'abc' | reverse }} {{ 'abc' | list }} {{ {'b': 1, 'a': 2} | dictsort }}", {}),
    ("{{ {'b': 1, 'a': 2} | items | list }} {{ 'a-b-a' | replace('a', 'x') }} {{ 'a-b-a' | replace('a', 'x', 1) }} {{ 42 | string ~ '!' }}", {}),
    ("{{ 'line1\\nline2\\n\\nline4' | indent(2) }}|{{ 'a\\nb' | indent(first=true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}", {}),
    ("{{ messages[0] | attr('role') }} {{ [1, 2] | join }} {{ [1, none, 'x'] | join('|') }} {{ messages | join(', ', attribute='role') }}", {}),
    # tojson, as transformers overrides it
    ("{{ messages | tojson }}", {}),
    ("{{ messages[:2] | tojson(indent=4) }}", {}),
    ("{{ {'b': 1, 'a': [1.0, 2.5, none, true, 'é \"q\" \\\\ \\n\\t\\u0001'], 'c': {}} | tojson(sort_keys=true) }}", {}),
    ("{{ obj | tojson(separators=(',', ':')) }} {{ obj | tojson(ensure_ascii=true) }} {{ [] | tojson(indent=2) }}", {"obj": {"x": "ü😀", "y": [1, {}]}}),
    ("{{ 'it\\'s <b>&' | tojson }} {{ 1e100 | tojson }} {{ 3 | tojson }} {{ 0.5 | tojson(indent='  ') }}", {}),
    ("{{ tools | tojson(indent=2) }}", {"tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]}),
    # string methods on Unicode text
    ("{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\u2003é\\u2003'.strip() }}|", {}),
    ("{{ 'a,b,,c'.split(',') }} {{ ' a  b \\t c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a\\u3000b'.split() }}", {}),
    ("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello'.upper() }} {{ 'HeLLo'.lower() }} {{ 'hello world'.title() }}", {}),
    ("{{ 'aXbXc'.replace('X', '-') }} {{ 'héllo'.find('l') }} {{ 'héllo'.find('z') }} {{ 'banana'.count('an') }} {{ ', '.join(['a', 'b']) }}", {}),
    ("{{ 'ab'.replace('', '-') }} {{ messages[1].content.strip() }} {{ messages[2].content.split('\\n') }}", {}),
    # statements: scoping, loops, macros, namespace, set
    ("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i * 10 %}{{ x }} {% endfor %}{{ x }}", {}),
    ("{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}),
    ("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }} {% endfor %}", {}),
    ("{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined else '-' }}>{{ loop.nextitem.role if loop.nextitem is defined else '-' }} {% endfor %}", {}),
    ("{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}{{ loop.cycle('a', 'b') }} {% endfor %}", {}),
    ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("{% for i in [] %}x{% else %}empty{% endfor %} {% for i in range(2, 8, 3) %}{{ i }}{% endfor %} {% for i in range(3, 0, -1) %}{{ i }}{% endfor %}", {}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% set p, q = 'xy' | list %}{{ q }}{{ p }} {% set t = 1, 2 %}{{ t }}", {}),
    ("{% for i in range(2) %}{% for j in range(2) %}{{ loop.index }}{{ i }}{{ j }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(punct='.', name='c') }}", {}),
    ("{% macro show(m) %}\n  [{{ m.role }}]\n{% endmacro %}\n{% for m in messages %}{{ show(m) }}{% endfor %}", {}),
    ("{% set block %}inner {{ messages | length }}{% endset %}[{{ block }}] {{ block | length }}", {}),
    ("{% if messages[0].role == 'system' %}{% set system = messages[0].content %}{% set rest = messages[1:] %}{% else %}{% set system = 'default' %}{% set rest = messages %}{% endif %}{{ system }}|{{ rest | length }}", {}),
    ("{% set d = dict(a=1, b='x') %}{{ d }} {{ d.a }} {% set n = namespace(d) %}{{ n.a }}", {}),
    ("{% for m in messages %}{% if m.content is string %}{{ m.content | trim }}{% elif m.content is iterable %}list{% else %}?{% endif %}{% if not loop.last %}\n{% endif %}{% endfor %}", {}),
    ("{{ bos_token is defined }} {{ add_generation_prompt }} {{ tools is none }} {{ documents }}", {}),
    ("{% for m in messages %}{% for key in m %}{{ key }} {% endfor %}{% endfor %}", {}),
    ("{% for c in 'héllo' %}{{ c }}.{% endfor %} {% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %}", {}),
    # shapes seen in real templates: trailing text after an expression, raw text between tags
    # stripped by `-`, keyword arguments of a tool call as pairs, a tool call's function unwrapped
    ("{%- for m in messages %}\n    {{- '<h>' }} \n    {%- if m.role == 'user' %}\n        {{- 'U' }}\n    {%- endif %}\n{%- endfor %}", {}),
    ("{%- for m in messages %}\n    {{- \"<|ipython|>\\n\\n\" -}}\n    {\"output\": \"{{ m.content }}\"}\n    {{- \"<|eot|>\" }}\n{%- endfor %}", {}),
    ("{%- for arg_name, arg_val in call.arguments | items %}\n    {{- arg_name + '=\"' + arg_val + '\"' }}\n    {%- if not loop.last %}\n        {{- ', ' }}\n    {%- endif %}\n{%- endfor %}", {"call": {"arguments": {"query": "x", "k": "2"}}}),
    ("{%- for tool_call in calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}{{ tool_call.name }}:{{ tool_call.arguments | tojson }};{%- endfor %}", {"calls": [{"function": {"name": "a", "arguments": {"x": [1, None, True, 1.5]}}}, {"name": "b", "arguments": {}}]}),
]

# Templates that make Jinja raise: ChunkFlow must refuse the line too.
FAILING = [
    "{{ undefined_thing.attr }}",
    "{{ raise_exception('Conversation roles must alternate') }}",
    "{{ 1 + 'a' }}",
    "{{ 1 + none }}",
    "{{ 'a' < 1 }}",
    "{% for x in none %}{% endfor %}",
    "{{ 1 / 0 }}",
    "{% set a, b = [1, 2, 3] %}",
    "{{ range(1000000) | length }}",
    "{{ 'a'.split('') }}",
]

UNSUPPORTED = [
    ("{{ x | wordwrap }}", "the filter 'wordwrap' is not supported"),
    ("{% include 'other' %}", "the tag '{% include %}' is not supported"),
    ("{{ x is escaped }}", "the test 'escaped' is not supported"),
    ("{% for x in y recursive %}{% endfor %}", "recursive for loops are not supported"),
]


def run(tool, *args, check=True):
    result = subprocess.run([tool, *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stderr}"
    return result


def transformers_render(template, variables):
    return _compile_jinja_template(template).render(**variables)


def check_conformance(tool, work):
    folder = os.path.join(work, "plain")
    os.makedirs(folder)
    line_path = os.path.join(work, "line.jsonl")
    template_path = os.path.join(work, "case.jinja")
    for index, (template, extra) in enumerate(CASES):
        with open(template_path, "w", encoding="utf-8", newline="") as out:
            out.write(template)
        with open(line_path, "w", encoding="utf-8") as out:
            out.write(json.dumps({"messages": MESSAGES, **extra}) + "\n")
        variables = {"messages": MESSAGES, "tools": None, "documents": None, "add_generation_prompt": False, **extra}
        want = transformers_render(template, variables)
        result = run(tool, "render", "--tokenizer", folder, "--chat-template", template_path, "--input", line_path,
                     "--loss-on", "all", check=False)
        assert result.returncode == 0, f"case {index}: {template!r}\n{result.stderr}"
        got = json.loads(result.stdout)["text"]
        assert got == want, f"case {index}: {template!r}\n  chunkflow    {got!r}\n  transformers {want!r}"
    print(f"jinja: {len(CASES)} templates render as transformers renders them")

    for template in FAILING:
        try:
            transformers_render(template, {"messages": MESSAGES})
            raise AssertionError(f"jinja did not raise for {template!r}")
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001 - any Jinja/Python error is the point
            pass
        with open(template_path, "w") as out:
            out.write(template)
        result = run(tool, "render", "--tokenizer", folder, "--chat-template", template_path, "--input", line_path,
                     "--loss-on", "all", check=False)
        assert result.returncode == 1 and "line.jsonl:1:" in result.stderr, f"{template!r}: {result.stderr}"
    for template, message in UNSUPPORTED:
        with open(template_path, "w") as out:
            out.write(template)
        result = run(tool, "render", "--tokenizer", folder, "--chat-template", template_path, "--input", line_path,
                     check=False)
        assert result.returncode == 1 and "case.jinja:1: " + message in result.stderr, f"{template!r}: {result.stderr}"
    print(f"jinja: {len(FAILING)} templates that raise in Jinja fail here too; {len(UNSUPPORTED)} unsupported "
          "constructs refused by name and line")


# ---- chat data --------------------------------------------------------------------------------

CHATML = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content %}
            {{- message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls | default([]) %}
            {%- if message.content or not loop.first %}
                {{- '\\n' }}
            {%- endif %}
            {{- '<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

HEADERS = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


CHATML_TAGGED = CHATML.replace(
    """        {{- '<|im_start|>' + message.role + '\\n' }}""",
    """        {{- '<|im_start|>' + message.role + '\\n' }}{% generation %}""").replace(
    """        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}""",
    """        {{- '<|im_end|>\\n' }}{% endgeneration %}
    {%- elif message.role == "tool" %}""")
assert CHATML_TAGGED.count("generation %}") == 2

HEADERS_TAGGED = HEADERS.replace(
    """    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}""",
    """    {%- if message['role'] == 'assistant' %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}
    {%- else %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}""")

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather at a place",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]


def conversations(seed):
    generator = random.Random(seed)
    words = ["hello", "world", "Café", "naïve", "日本語", "😀", "don't", "12345", "a\nb", "  spaced  ", "tab\t", "ΣΙΣ",
             "x<|im_end|>y", "e\u0301", "?!"]

    def text():
        return " ".join(generator.choice(words) for _ in range(generator.randint(1, 12)))

    chats = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                      {"role": "assistant", "content": " 6 \n"}]},
        # Assistant text that starts with newlines and spaces: the pre-tokenizer joins them with the
        # template's own newline, so a token straddles where the loss starts (it carries loss, as in
        # transformers' assistant_masks).
        {"messages": [{"role": "user", "content": "indent?"}, {"role": "assistant", "content": "\n\n  indented"},
                      {"role": "user", "content": "more"}, {"role": "assistant", "content": "   spaces first"}]},
        {"messages": [{"role": "user", "content": "weather in Paris?"},
                      {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]},
                      {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "assistant", "content": "21 degrees."}],
         "tools": TOOLS},
    ]
    for _ in range(40):
        turns = generator.randint(1, 4)
        messages = [{"role": "system", "content": text()}] if generator.random() < 0.5 else []
        for _ in range(turns):
            messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        chats.append({"messages": messages})
    return chats


def write_tokenizer(work, name, template):
    tokenizer = build("qwen2")
    tokenizer.add_special_tokens(["<|start_header_id|>", "<|end_header_id|>"])
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as out:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|im_end|>", "chat_template": template}, out)
    return folder, AutoTokenizer.from_pretrained(folder)


def transformers_sample(tokenizer, chat, loss_on):
    extra = {"tools": chat["tools"]} if "tools" in chat else {}
    out = tokenizer.apply_chat_template(chat["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=loss_on != "all", **extra)
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"]) if loss_on != "all" else [1] * len(ids)
    if loss_on == "last":  # only the last generation span
        last_start = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
        mask = [m if i >= last_start else 0 for i, m in enumerate(mask)]
    return ids, mask


def prepare(tool, folder, chats, work, name, loss_on, threads=1):
    source = os.path.join(work, name + ".jsonl")
    with open(source, "w", encoding="utf-8") as out:
        for chat in chats:
            out.write(json.dumps(chat, ensure_ascii=False) + "\n")
    prefix = os.path.join(work, name, "data")
    run(tool, "prepare", "--input", source, "--output", prefix, "--tokenizer", folder, "--loss-on", loss_on,
        "--threads", str(threads), "--quiet")
    sequences = read_dataset(prefix)
    masks = read_dataset(prefix + "_loss_mask") if loss_on != "all" else [[1] * len(s) for s in sequences]
    return sequences, masks, open(prefix + ".bin", "rb").read()


def check_chat_data(tool, work):
    cases = [("chatml", CHATML, CHATML_TAGGED), ("headers", HEADERS, HEADERS_TAGGED),
             ("tagged", CHATML_TAGGED, CHATML_TAGGED)]
    for name, template, tagged in cases:
        folder, tokenizer = write_tokenizer(work, name, template)
        _, reference = write_tokenizer(work, name + "_reference", tagged)
        chats = conversations(seed=len(name))
        if name == "headers":
            chats = [c for c in chats if "tools" not in c and all(m["role"] != "tool" for m in c["messages"])]
        for loss_on in ("assistant", "last", "all"):
            sequences, masks, data = prepare(tool, folder, chats, work, f"{name}_{loss_on}", loss_on)
            assert len(sequences) == len(chats), (name, len(sequences))
            for chat, ids, mask in zip(chats, sequences, masks):
                want_ids, _ = transformers_sample(tokenizer, chat, "all")
                _, want_mask = transformers_sample(reference, chat, loss_on)
                assert ids == want_ids, f"{name}: ids differ for {chat}\n  chunkflow    {ids}\n  transformers {want_ids}"
                assert mask == want_mask, (f"{name} --loss-on {loss_on}: mask differs for {chat}\n"
                                           f"  chunkflow    {mask}\n  transformers {want_mask}")
            if loss_on == "assistant":
                _, _, threaded = prepare(tool, folder, chats, work, f"{name}_threads", loss_on, threads=3)
                assert threaded == data, f"{name}: the dataset depends on --threads"
        print(f"{name}: {len(chats)} conversations, ids equal to apply_chat_template; loss masks (assistant, last, all) "
              f"equal to transformers' assistant_masks{' of the same template with generation blocks' if template != tagged else ''}")


def check_refusals(tool, work):
    folder, _ = write_tokenizer(work, "refusals", HEADERS)
    source = os.path.join(work, "bad.jsonl")
    with open(source, "w") as out:
        out.write(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
        out.write(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}) + "\n")
    result = run(tool, "prepare", "--input", source, "--output", os.path.join(work, "bad", "data"), "--tokenizer", folder,
                 "--quiet", check=False)
    assert result.returncode == 1 and "bad.jsonl:2:" in result.stderr and \
        "the template raised: Conversation roles must alternate" in result.stderr, result.stderr
    result = run(tool, "prepare", "--input", source, "--output", os.path.join(work, "bad", "data"), "--tokenizer", folder,
                 "--quiet", "--skip-bad-lines")
    assert "1 bad skipped" in result.stdout, result.stdout

    with open(source, "w") as out:
        out.write(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    result = run(tool, "prepare", "--input", source, "--output", os.path.join(work, "bad", "data"), "--tokenizer", folder,
                 "--quiet", check=False)
    assert result.returncode == 1 and "no assistant message to learn from (roles: user)" in result.stderr, result.stderr

    # A template that renders earlier assistant turns differently once later turns exist.
    rewriting = os.path.join(work, "rewriting.jinja")
    with open(rewriting, "w") as out:
        out.write("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}[old]{% else %}"
                  "{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with open(source, "w") as out:
        out.write(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                           {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}) + "\n")
    result = run(tool, "prepare", "--input", source, "--output", os.path.join(work, "bad", "data"), "--tokenizer", folder,
                 "--chat-template", rewriting, "--quiet", check=False)
    assert result.returncode == 1 and "messages[1] (assistant): the chat template does not render" in result.stderr, \
        result.stderr
    result = run(tool, "prepare", "--input", source, "--output", os.path.join(work, "last", "data"), "--tokenizer", folder,
                 "--chat-template", rewriting, "--loss-on", "last", "--quiet")
    # A model folder whose template the engine cannot read still prepares text lines.
    unreadable = os.path.join(work, "refusals", "chat_template.jinja")
    with open(unreadable, "w") as out:
        out.write("{{ messages | wordwrap }}")
    with open(source, "w") as out:
        out.write(json.dumps({"text": "plain text"}) + "\n")
    run(tool, "prepare", "--input", source, "--output", os.path.join(work, "text", "data"), "--tokenizer", folder, "--quiet")
    with open(source, "a") as out:
        out.write(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    result = run(tool, "prepare", "--input", source, "--output", os.path.join(work, "text", "data"), "--tokenizer", folder,
                 "--quiet", check=False)
    assert result.returncode == 1 and "bad.jsonl:2: a chat line needs the model's chat template, which cannot be used: " \
        in result.stderr and "the filter 'wordwrap' is not supported" in result.stderr, result.stderr
    print("refusals: a template that raises (file:line, skippable), no assistant turn, a template that rewrites "
          "earlier turns (--loss-on last still works), an unreadable template (text lines still prepare)")


def check_special_tokens(tool, work):
    """bos_token / eos_token / additional_special_tokens as transformers gives them to a template:
    tokenizer_config.json (a string or an AddedToken object); when it has no added_tokens_decoder
    (a tokenizer saved before transformers 4.34), special_tokens_map.json overrides it. --append-eos
    appends the same eos_token."""
    template = ("{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}|{{ additional_special_tokens }}|"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    for legacy in (True, False):
        folder, _ = write_tokenizer(work, f"special_{legacy}", "unused")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
                  "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": True},
                  "additional_special_tokens": ["<|eot_id|>"]}
        if not legacy:  # as saved since transformers 4.34: a string eos_token, the added tokens listed
            config["eos_token"] = "<|im_end|>"
            reference = AutoTokenizer.from_pretrained(folder)
            config["added_tokens_decoder"] = {str(i): {"content": t.content, "lstrip": False, "normalized": False,
                                                       "rstrip": False, "single_word": False, "special": True}
                                              for i, t in reference.added_tokens_decoder.items()}
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as out:
            json.dump(config, out)
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as out:
            json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>",
                       "additional_special_tokens": ["<|im_start|>"]}, out)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        want = tokenizer.apply_chat_template(chat["messages"], tokenize=False)
        source = os.path.join(work, "special.jsonl")
        with open(source, "w") as out:
            out.write(json.dumps(chat) + "\n")
        got = json.loads(run(tool, "render", "--tokenizer", folder, "--input", source).stdout)["text"]
        assert got == want, f"special tokens (legacy {legacy}): chunkflow {got!r}, transformers {want!r}"
        with open(source, "w") as out:
            out.write(json.dumps({"text": "a"}) + "\n")
        prefix = os.path.join(work, f"special_text_{legacy}", "data")
        run(tool, "prepare", "--input", source, "--output", prefix, "--tokenizer", folder, "--append-eos", "--quiet")
        assert read_dataset(prefix)[0][-1] == tokenizer.eos_token_id, (read_dataset(prefix), tokenizer.eos_token_id)
        print(f"special tokens ({'special_tokens_map.json overriding' if legacy else 'added_tokens_decoder: config alone'}): "
              f"{got!r}, as transformers renders it; --append-eos appends its eos_token")


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory() as work:
        check_conformance(tool, work)
        check_chat_data(tool, work)
        check_refusals(tool, work)
        check_special_tokens(tool, work)


if __name__ == "__main__":
    main()
