"""eval_model.py as users and scripts call it, and the download script offline."""
import json

import torch

import eval_model
from conftest import ROOT


def test_prompts_file_prints_one_json_line_per_prompt(trained, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("你好\n\n1+1等于几？\n讲个故事\n", encoding="utf-8")
    args = ["--save_dir", str(trained / "ckpt"), "--prompts_file", str(prompts), "--temperature", "0",
            "--max_new_tokens", "12"]
    assert eval_model.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in out]        # stdout holds nothing but the JSON lines
    assert [r["prompt"] for r in records] == ["你好", "1+1等于几？", "讲个故事"]
    chat = eval_model.Chat(trained / "ckpt" / "distill.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    for r in records:
        ids = chat.prompt_ids([{"role": "user", "content": r["prompt"]}], 12)
        tokens = list(chat.model.generate(torch.tensor([ids]), 12, temperature=0, eos_token_id=chat.eos))
        tokens = [t for t in tokens if t not in chat.eos]
        assert r["reply"] == chat.tok.decode(tokens)      # special tokens kept, final <|im_end|> dropped


def test_latest_stage_is_the_default_and_missing_stage_is_an_error(trained, tmp_path, capsys):
    from checkpoint import find_stage_checkpoint
    import Config
    assert find_stage_checkpoint(trained / "ckpt", None).name == f"{list(Config.STAGES)[-1]}.pt" == "grpo.pt"
    (trained / "ckpt" / "grpo.pt").rename(trained / "ckpt" / "grpo.pt.away")
    try:     # without the last stage's weights, the one before it
        assert find_stage_checkpoint(trained / "ckpt", None).name == "distill.pt"
    finally:
        (trained / "ckpt" / "grpo.pt.away").rename(trained / "ckpt" / "grpo.pt")
    assert eval_model.main(["--save_dir", str(tmp_path), "--prompt", "hi"]) == 2
    assert "holds no trained stage" in capsys.readouterr().err
    assert eval_model.main(["--save_dir", str(trained / "ckpt"), "--prompt", "hi", "--model", "default"]) == 2
    assert "different model config" in capsys.readouterr().err


def test_history_is_dropped_oldest_first(trained):
    chat = eval_model.Chat(trained / "ckpt" / "sft.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    system = {"role": "system", "content": "你是小新。"}
    history = [system]
    for i in range(40):
        history += [{"role": "user", "content": f"第{i}个问题：" + "很长的内容" * 10},
                    {"role": "assistant", "content": f"第{i}个回答。" + "很长的回答" * 10}]
    history.append({"role": "user", "content": "最后的问题"})
    ids = chat.prompt_ids(history, max_new_tokens=200)
    text = chat.tok.decode(ids)
    assert len(ids) <= chat.max_len - 200
    assert text.startswith("<|im_start|>system\n你是小新。") and "最后的问题" in text
    assert "第39个回答" in text and "第0个问题" not in text


def test_download_fails_offline_with_one_sentence(tmp_path, monkeypatch, capsys):
    import runpy
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # a closed loopback port: no network used
    module = runpy.run_path(str(ROOT / "scripts" / "download_data.py"))
    assert module["main"](["--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not reach http://127.0.0.1:9") and len(err.splitlines()) == 1


def test_reasoning_accuracy_tool_scores_with_the_generator_checker(trained, tmp_path, capsys):
    import runpy
    from grader import check_answer
    from scripts.gen_reasoning import generate
    problem = generate(1, seed=5)[0]
    assert check_answer(problem["kind"], problem["expected"], f"<think>\n…\n</think>\n<answer>\n{problem['answer']}\n</answer>")
    module = runpy.run_path(str(ROOT / "scripts" / "eval_reasoning.py"))
    out = tmp_path / "r.json"
    assert module["main"](["--save_dir", str(trained / "ckpt"), "--limit", "3", "--max_new_tokens", "8",
                           "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 3 and 0 <= result["accuracy"] <= 1 and len(result["results"]) == 3


def test_compile_flag_picks_the_decode_mode(trained):
    """--compile auto leaves CPU chat eager (compiling costs more than a short chat gains);
    on compiles the decode step (its tokens are tested in test_model.py)."""
    load = lambda mode: eval_model.Chat(trained / "ckpt" / "sft.pt", ROOT / "XiaoXin_tokenizer", "cpu",
                                        "float32", compile=mode).model.decode_mode
    assert [load("auto"), load("off"), load("on")] == ["dynamic", "dynamic", "compiled"]
    assert eval_model.main(["--save_dir", str(trained / "ckpt"), "--prompt", "hi", "--compile", "maybe"]) == 2


THREE_ANSWERS = "<think>\n想一想\n</think>\n<answer>\n二<answer>二</answer>\n<answer>还是二\n</answer>"


def printed(pieces, show_think=True) -> str:
    import io
    out = io.StringIO()
    printer = eval_model.ThinkPrinter(out, show_think=show_think)
    for piece in pieces:
        printer.write(piece)
    printer.finish()
    assert printer.buffer == "".join(pieces)               # the history keeps the raw reply
    return out.getvalue()


def test_printer_shows_one_header_of_each_however_many_tags_come():
    expected = "\n[思考] \n想一想\n\n\n[回答] \n二二\n还是二\n"
    assert printed([THREE_ANSWERS]) == expected
    for cut in range(len(THREE_ANSWERS)):                  # a tag split between two streamed pieces
        assert printed([THREE_ANSWERS[:cut], THREE_ANSWERS[cut:]]) == expected, cut
    assert printed(list(THREE_ANSWERS)) == expected        # one character at a time
    assert printed(["<think>a<think>b</think>c</think><answer>d<think>e"]) == "\n[思考] ab\nc[回答] de"
    assert printed(["<think>a<answer>b"]) == "\n[思考] a\n[回答] b"      # no </think>: the answer still starts
    assert printed(["<think>想</think><answer>答", "<ans"]) == "\n[思考] 想\n[回答] 答<ans"   # unfinished: text
    assert printed([THREE_ANSWERS], show_think=False) == "\n[思考] …\n\n[回答] \n二二\n还是二\n"


class ScriptedModel:
    """Stands in for XiaoXin.generate: records each call and 'generates' `text`, then <|im_end|>."""

    def __init__(self, chat, text):
        self.tokens = chat.tok.encode(text) + [chat.tok.im_end_id]
        self.prompts, self.sampling = [], []
        self.tok = chat.tok

    def generate(self, x, max_new_tokens, **sampling):
        self.prompts.append(self.tok.decode(x[0].tolist()))
        self.sampling.append(sampling)
        yield from self.tokens


def chat_session(trained, monkeypatch, capsys, lines: str, reply=THREE_ANSWERS, *flags):
    """Run `python eval_model.py` on the distilled tiny model with `lines` as its stdin; returns
    (stdout, the scripted model)."""
    import io

    from model import XiaoXin
    chat = eval_model.Chat(trained / "ckpt" / "distill.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    model = ScriptedModel(chat, reply)
    monkeypatch.setattr(XiaoXin, "generate", lambda self, x, n, **sampling: model.generate(x, n, **sampling))
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert eval_model.main(["--save_dir", str(trained / "ckpt"), "--stage", "distill", "--compile", "off", *flags]) == 0
    return capsys.readouterr().out, model


def test_help_lists_the_commands_and_no_command_reaches_the_model(trained, monkeypatch, capsys):
    out, model = chat_session(trained, monkeypatch, capsys, "/help\n/nonsense\n/temp warm\n?\n/exit\n")
    assert model.prompts == []                                              # nothing generated
    for command in ["/help", "/clear", "/system", "/temp", "/think", "/save", "/exit", "/quit"]:
        assert out.count(command) >= 2, command                            # listed by /help and by ?
    lines = out.splitlines()
    assert [line for line in lines if "/nonsense" in line] == ["你: unknown command /nonsense; /help lists them"]
    assert [line for line in lines if "warm" in line] == ["你: /temp takes a number >= 0 (0 = always the "
                                                          "likeliest token), not warm"]
    assert "小新:" not in out


def test_session_commands_change_what_the_model_is_asked(trained, monkeypatch, capsys, tmp_path):
    lines = ["第一问", "/temp 0.3", "/system 你是小新。", "第二问", "/think off", "第三问", "//slash 开头",
             "/system", "/clear", "第四问", f"/save {tmp_path / 'chat.json'}", f"/save {tmp_path / 'chat.md'}",
             f"/save {tmp_path / 'missing' / 'chat.md'}", "/quit", "never read"]
    out, model = chat_session(trained, monkeypatch, capsys, "\n".join(lines) + "\n", THREE_ANSWERS,
                              "--temperature", "0.8")
    first, second, third, fourth, fifth = model.prompts
    assert [s["temperature"] for s in model.sampling] == [0.8, 0.3, 0.3, 0.3, 0.3]
    assert "第一问" in first and "system" not in first
    assert second.startswith("<|im_start|>system\n你是小新。") and "第一问" not in second   # history restarted
    assert "第二问" in third and "第三问" in third                             # the conversation goes on
    assert "/slash 开头" in fourth and "//slash" not in fourth
    assert "system" not in fifth and "第三问" not in fifth and "第四问" in fifth
    assert out.count("小新: ") == out.count("[思考]") == out.count("[回答]") == 5
    shown, hidden = out.split("thinking hidden")
    assert shown.count("想一想") == 2 and "想一想" not in hidden and hidden.count("[思考] …") == 3

    saved = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert saved["messages"] == [{"role": "user", "content": "第四问"},
                                 {"role": "assistant", "content": THREE_ANSWERS}]
    assert saved["stage"] == "distill" and saved["sampling"]["temperature"] == 0.3
    markdown = (tmp_path / "chat.md").read_text(encoding="utf-8")
    assert "## 你\n\n第四问" in markdown and "[思考] \n想一想" in markdown and markdown.count("[回答]") == 1
    assert [line for line in out.splitlines() if "missing" in line] == \
           [f"你: cannot write {tmp_path / 'missing' / 'chat.md'}: No such file or directory"]
