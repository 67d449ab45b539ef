"""Configuration: config.yaml documents the defaults exactly; bad keys and values are named."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manualrag.config import DEFAULTS, load_config
from manualrag.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_config_yaml_equals_builtin_defaults():
    assert yaml.safe_load((ROOT / "config.yaml").read_text()) == DEFAULTS


def test_file_env_and_flag_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 8\nocr:\n  psm: 6\n")
    cfg = load_config(f, environ={"MANUALRAG_OCR__PSM": "3", "MANUALRAG_INDEX_DIR": "/x"})
    assert cfg["batch_size"] == 8 and cfg["ocr"]["psm"] == 3 and cfg["index_dir"] == "/x"
    cfg = load_config(f, overrides={"batch_size": 4, "model": None}, environ={})
    assert cfg["batch_size"] == 4 and cfg["model"] == DEFAULTS["model"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("batchsize: 8\n", "batchsize"),
        ("ocr:\n  psn: 6\n", "ocr.psn"),
        ("batch_size: many\n", "batch_size"),
        ("device: gpu\n", "device"),
        ("extract:\n  figure_dpi: -5\n", "extract.figure_dpi"),
        ("ocr: 3\n", "ocr"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    assert f"'{key}'" in str(err.value)


def test_bad_env_value_names_the_key():
    with pytest.raises(ConfigError, match="'batch_size'"):
        load_config(environ={"MANUALRAG_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match="'ocr.psn'"):
        load_config(environ={"MANUALRAG_OCR__PSN": "6"})
    # variables that are not config keys (a proxy token, test settings) are left alone
    assert load_config(environ={"MANUALRAG_TOKEN": "abc"}) == load_config(environ={})


def test_env_list_given_as_a_bare_string_names_the_variable_and_the_form(tmp_path):
    """MANUALRAG_PASSWORDS=x is refused in one line that names the variable and shows a list that works."""
    r = subprocess.run(
        [sys.executable, "-m", "manualrag", "stats", "--index-dir", str(tmp_path / "i")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MANUALRAG_PASSWORDS": "x"},
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("error: environment variable MANUALRAG_PASSWORDS:"), line
    assert "list of strings" in line
    example = re.search(r"MANUALRAG_PASSWORDS='(.*?)'", line)
    assert example, line
    assert load_config(environ={"MANUALRAG_PASSWORDS": example.group(1)})["passwords"] == ["one", "two"]


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("nonsense_key: 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "manualrag", "--config", str(f), "stats", "--index-dir", str(tmp_path / "i")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "unknown config key 'nonsense_key'" in r.stderr
    assert "Traceback" not in r.stderr
    # the same file named by MANUALRAG_CONFIG: the line says which file (before: only the key)
    r = subprocess.run(
        [sys.executable, "-m", "manualrag", "stats", "--index-dir", str(tmp_path / "i")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MANUALRAG_CONFIG": str(f)},
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: config file {f}: unknown config key 'nonsense_key'", r.stderr


def test_cli_global_options_also_follow_the_command(tmp_path):
    """``manualrag stats --config FILE`` (where MCP clients' argument lists put it) was "No such option";
    after the command the file is read as before it, and --debug turns on tracebacks there too."""
    (tmp_path / "bad.yaml").write_text("nonsense_key: 1\n")
    (tmp_path / "good.yaml").write_text("index_dir: elsewhere\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "manualrag", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)

    r = run("stats", "--config", "bad.yaml")
    assert r.returncode == 2 and "unknown config key 'nonsense_key'" in r.stderr, r.stderr
    elsewhere = f"no index in {tmp_path / 'elsewhere'} "  # (relative to the config file's folder)
    r = run("stats", "--config", "good.yaml")  # the file's index_dir, not the default data/index
    assert r.returncode == 2 and r.stderr.startswith(f"error: {elsewhere}"), r.stderr
    r = run("stats", "--config", "good.yaml", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr and elsewhere in r.stderr
    r = run("--config", "bad.yaml", "stats", "--config", "good.yaml")  # the later one wins
    assert r.returncode == 2 and elsewhere in r.stderr and "nonsense" not in r.stderr
    # the default index folder is relative to where the user is: the line says where that was
    r = run("stats")
    assert r.returncode == 2 and f"that is {tmp_path / 'data' / 'index'})" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "data, says",
    [
        (b"ocr: [\n", "is not valid YAML: line 2, column 1: expected the node content"),
        (b"ocr:\n\tpsm: 6\n", "is not valid YAML: line 2, column 1: a tab character"),
        (b"just a sentence\n", "must be a mapping of settings"),
        (b"ocr:\n  psm: \xff\n", "is not UTF-8 text (byte 12)"),
        # checked only when the store opened, it named the key but not the file
        (b"store:\n  url: ftp://nope\n", ": config key 'store.url' must start with http:// or https://"),
    ],
)
def test_cli_unreadable_config_file_is_one_line_naming_the_file(tmp_path, data, says):
    """A config file a user got wrong: PyYAML's multi-line message came out as one line full of literal
    ``\\n`` (the output escapes line breaks), a file that is one string said "config section '<root>'"
    without naming the file, and a file that is not UTF-8 was a traceback (UnicodeDecodeError, rc 1)."""
    (tmp_path / "c.yaml").write_bytes(data)
    r = subprocess.run(
        [sys.executable, "-m", "manualrag", "--config", "c.yaml", "stats", "--index-dir", "i"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: config file c.yaml")
    assert says in r.stderr and "\\n" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "env, says",
    [
        (
            {"MANUALRAG_OCR__PSM": "99"},
            "config key 'ocr.psm' must be one of [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]",
        ),
        ({"MANUALRAG_OCR__PSM": "0"}, "config key 'ocr.psm' must be one of"),  # orientation only: no text
        (
            {"MANUALRAG_OCR__LANGUAGES": "eng;rm"},
            "config key 'ocr.languages' must be tesseract language codes joined by '+', e.g. eng or eng+deu",
        ),
    ],
)
def test_ocr_settings_tesseract_cannot_use_are_config_errors(env, says):
    """A page segmentation mode tesseract does not read text with (psm 99 gave empty OCR text, rc 0) and a
    language list that is not codes joined by '+' (its install hint became two shell commands) are refused
    with the key named; real language lists still load."""
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(environ=env)
    assert load_config(environ={"MANUALRAG_OCR__LANGUAGES": "eng+chi_sim+script/Latin"})["ocr"]["languages"]


def test_a_top_level_environment_variable_a_typo_away_from_a_key_is_named():
    """MANUALRAG_INDEXDIR was silently ignored (the index went to data/index); variables of other tools and
    of our own that are not config keys (MANUALRAG_TOKEN, MANUALRAG_SERVE_PROXY_PORT) still are."""
    for env, key, meant in (
        ({"MANUALRAG_INDEXDIR": "x"}, "indexdir", "MANUALRAG_INDEX_DIR"),
        ({"MANUALRAG_MODLE": "none"}, "modle", "MANUALRAG_MODEL"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(environ=env)
        assert str(err.value) == (
            f"environment variable {next(iter(env))}: unknown config key '{key}' (did you mean {meant}?)"
        )
    others = {
        "MANUALRAG_TOKEN": "t" * 32,
        "MANUALRAG_SERVE_PROXY_PORT": "8443",
        "MANUALRAG_CACHE_DIR": "/tmp",
    }
    assert load_config(environ={**others, "MANUALRAG_INDEX_DIR": "y"})["index_dir"] == "y"


def test_help_does_not_import_torch():
    code = (
        "import sys; from manualrag.cli import main; sys.argv=['manualrag','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'chromadb' not in sys.modules and 'fitz' not in sys.modules, 'heavy import'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "index" in r.stdout and "query" in r.stdout


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(tmp_path):
    """A project's config.yaml says ``index_dir: data/index``: a command run from another folder with
    ``--config`` uses the project's index, not a new one under the working directory (it did)."""
    proj = tmp_path / "proj"
    (proj / "models" / "clip").mkdir(parents=True)
    f = proj / "manualrag.yaml"
    f.write_text(
        "index_dir: data/index\nocr:\n  cache: cache/ocr.sqlite\nmodel: models/clip\n"
        "text_model: sentence-transformers/all-MiniLM-L6-v2\n"
    )
    cfg = load_config(f, environ={})
    assert cfg["index_dir"] == str(proj / "data" / "index")
    assert cfg["ocr"]["cache"] == str(proj / "cache" / "ocr.sqlite")
    assert cfg["model"] == str(proj / "models" / "clip")  # a folder there: that folder
    assert cfg["text_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # no such folder: a model name
    # from variables and flags, paths stay relative to the working directory; absolute ones stay as they are
    cfg = load_config(f, environ={"MANUALRAG_INDEX_DIR": "here"}, overrides={"ocr": {"cache": "c.sqlite"}})
    assert cfg["index_dir"] == "here" and cfg["ocr"]["cache"] == "c.sqlite"
    f.write_text(f"index_dir: {tmp_path / 'abs'}\n")
    assert load_config(f, environ={})["index_dir"] == str(tmp_path / "abs")
    # the defaults (no file) are relative to the working directory, as the README says
    assert load_config(None, environ={})["index_dir"] == "data/index"
    # a config named through a relative path: its folder joined without "..", as stats shows it
    f.write_text("index_dir: ./data/../data/index\n")
    assert load_config(Path(os.path.relpath(f)), environ={})["index_dir"] == str(proj / "data" / "index")

    # end to end: index and query from another folder with a relative --config
    lib = proj / "manuals"
    lib.mkdir()
    (lib / "pump.md").write_text("# Pump\n\nBleed the hydraulic pump before the first start.\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MANUALRAG_INDEX_DIR", None)
    base = [sys.executable, "-m", "manualrag", "--config", "../proj/manualrag.yaml"]
    (proj / "manualrag.yaml").write_text("index_dir: data/index\nmodel: none\ntext_model: none\n")
    r = subprocess.run(
        [*base, "index", "../proj/manuals"], capture_output=True, text=True, cwd=elsewhere, env=env
    )
    assert r.returncode == 0, r.stderr
    assert (proj / "data" / "index" / "index.sqlite").is_file()
    assert not (elsewhere / "data").exists()
    r = subprocess.run([*base, "query", "bleed pump"], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    assert "pump.md" in r.stdout


def test_a_config_file_key_a_typo_away_from_a_key_is_named(tmp_path):
    """`modle:` in config.yaml said only "unknown config key 'modle'", while MANUALRAG_MODLE said which key
    was meant: the file's error now names it too, nested keys at their own level; a key like nothing known
    still gets no guess."""
    for text, says in (
        ("modle: none\n", "unknown config key 'modle' (did you mean 'model'?)"),
        (
            "retrieve:\n  candidats: 5\n",
            "unknown config key 'retrieve.candidats' (did you mean 'retrieve.candidates'?)",
        ),
        ("ocr:\n  langauges: eng\n", "unknown config key 'ocr.langauges' (did you mean 'ocr.languages'?)"),
        ("nonsense_key: 1\n", "unknown config key 'nonsense_key'"),
    ):
        f = tmp_path / "c.yaml"
        f.write_text(text)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "manualrag",
                "--config",
                str(f),
                "stats",
                "--index-dir",
                str(tmp_path / "i"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert r.returncode == 2 and r.stderr.strip() == f"error: config file {f}: {says}", r.stderr
    # the nested variable names the variable meant
    with pytest.raises(ConfigError) as err:
        load_config(environ={"MANUALRAG_RETRIEVE__CANDIDATS": "5"})
    assert str(err.value).endswith("(did you mean MANUALRAG_RETRIEVE__CANDIDATES?)"), err.value
