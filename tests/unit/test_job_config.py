"""Job files: a minimal job loads with its defaults, and every bad file fails in one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from residency.common.config.job import Job, TrackingSection, load_job
from residency.common.config.kinds import AccountantKind, Optimizer, StepRule, UpdateKind
from residency.common.errors import ConfigError

pytestmark = pytest.mark.unit

DATA = '[data]\nlabels = ["neg", "pos"]\n'
PRIVACY = "[privacy]\ntarget_epsilon = 8.0\n"
MINIMAL = DATA + PRIVACY


def write_job(folder: Path, text: str, name: str = "job.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, field: str | None, *phrases: str) -> str:
    """Load ``path`` expecting a ConfigError; check its one-line shape and return the message.

    ``field`` is the dotted field path the message must name right after the file, or ``None``
    for errors about the file itself.
    """
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    if field is not None:
        assert message.startswith(f"{path}: {field}: "), message
    assert message.count("; fix: ") == 1, message
    assert message.split("; fix: ")[1].strip(), message
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_minimal_job_loads_with_documented_defaults(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, MINIMAL))

    assert job.name == "job"
    assert job.model.path == "minilm"
    assert job.model.max_length == 128
    assert job.data.labels == ["neg", "pos"]
    assert job.data.text_column == "text"
    assert job.data.label_column == "label"
    assert job.data.test is None
    # The best measured at partner sizes: a release, then full-batch plain steps on the head.
    assert job.train.update is UpdateKind.HEAD
    assert job.train.warm_start is UpdateKind.PROTOTYPES
    assert job.train.rounds == 5
    assert job.train.server_rounds == 6
    assert job.train.local_epochs == 10
    assert job.train.batch_size == 65_536
    assert job.train.learning_rate == pytest.approx(0.032)
    assert job.train.optimizer is Optimizer.SGD
    assert job.train.step_rule is StepRule.NOISE
    assert job.train.lora_rank == 8
    assert job.train.lora_alpha == pytest.approx(16.0)
    assert job.train.lora_targets == ["query", "value"]
    assert job.train.seed == 0
    assert job.privacy.target_epsilon == pytest.approx(8.0)
    assert job.privacy.delta == pytest.approx(1e-5)
    assert job.privacy.max_grad_norm == pytest.approx(1.0)
    assert job.privacy.accountant is AccountantKind.PRV
    assert job.privacy.warm_start_share == pytest.approx(0.5)
    assert job.nodes == []


def test_full_job_keeps_every_value(tmp_path: Path) -> None:
    text = """name = "clinics-2025"

[model]
path = "tiny"
max_length = 64

[data]
text_column = "note"
label_column = "specialty"
labels = ["Cardiology", "Neurology", "Oncology"]

[train]
rounds = 5
local_epochs = 2
batch_size = 16
learning_rate = 0.01
update = "full"
seed = 7

[privacy]
target_epsilon = 3
delta = 1e-6
max_grad_norm = 0.5
accountant = "rdp"

[[nodes]]
country = "DE"
data = "de.csv"

[[nodes]]
country = "FR"
data = "fr.csv"
"""
    job = load_job(write_job(tmp_path, text))

    assert job.name == "clinics-2025"
    assert (job.model.path, job.model.max_length) == ("tiny", 64)
    assert (job.data.text_column, job.data.label_column) == ("note", "specialty")
    assert job.data.labels == ["Cardiology", "Neurology", "Oncology"]
    assert (job.train.rounds, job.train.local_epochs, job.train.batch_size) == (5, 2, 16)
    assert job.train.update is UpdateKind.FULL
    assert job.train.seed == 7
    assert job.privacy.target_epsilon == pytest.approx(3.0)
    assert job.privacy.delta == pytest.approx(1e-6)
    assert job.privacy.max_grad_norm == pytest.approx(0.5)
    assert job.privacy.accountant is AccountantKind.RDP
    assert [node.country for node in job.nodes] == ["DE", "FR"]


def test_job_is_frozen(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, MINIMAL))

    with pytest.raises(ValidationError):
        job.privacy.target_epsilon = 1000.0  # type: ignore[misc]


def test_relative_paths_resolve_against_the_job_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    checkpoint = folder / "models" / "bert"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    text = """[model]
path = "models/bert"

[data]
labels = ["neg", "pos"]
test = "../shared/test.csv"

[privacy]
target_epsilon = 8.0

[[nodes]]
country = "DE"
data = "data/de.csv"
"""
    write_job(folder, text)
    # Load through a relative job path from another working directory: the job's own folder,
    # not the current directory, anchors its relative paths.
    monkeypatch.chdir(elsewhere)

    job = load_job(Path("..") / "conf" / "job.toml")

    assert Path(job.model.path) == checkpoint.resolve()
    assert job.data.test is not None
    assert job.data.test.is_absolute()
    assert job.data.test.resolve() == (tmp_path / "shared" / "test.csv").resolve()
    assert job.nodes[0].data.is_absolute()
    assert job.nodes[0].data.resolve() == (folder / "data" / "de.csv").resolve()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "somewhere" / "de.csv"
    text = MINIMAL + f'\n[[nodes]]\ncountry = "DE"\ndata = "{data.as_posix()}"\n'

    job = load_job(write_job(tmp_path / "conf", text))

    assert job.nodes[0].data == data


def test_builtin_model_names_are_not_paths(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()  # a folder of the same name does not shadow the built-in
    text = MINIMAL + '[model]\npath = "tiny"\n'

    assert load_job(write_job(tmp_path, text)).model.path == "tiny"


def test_missing_file(tmp_path: Path) -> None:
    load_error(tmp_path / "absent.toml", None, "not found")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "job.toml"
    folder.mkdir()

    load_error(folder, None, "directory")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[data\nlabels = []\n", id="unclosed-table"),
        pytest.param(MINIMAL + "[privacy]\ndelta = 1e-5\n", id="table-twice"),
        pytest.param('name = "a"\nname = "b"\n' + MINIMAL, id="key-twice"),
        pytest.param('[data]\nlabels = ["a",\n', id="unclosed-array"),
        pytest.param("name = job\n" + MINIMAL, id="bare-string"),
    ],
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    load_error(write_job(tmp_path, text), None, "invalid TOML")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(('name = "Zürich"\n' + MINIMAL).encode("latin-1"))

    load_error(path, None, "UTF-8")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param('colour = "blue"\n' + MINIMAL, "colour", id="top-level"),
        pytest.param(MINIMAL + "[train]\nwarmup_steps = 10\n", "train.warmup_steps", id="train"),
        pytest.param(
            DATA + PRIVACY + "noise_multiplier = 0.5\n", "privacy.noise_multiplier", id="privacy"
        ),
        pytest.param(MINIMAL + "[model]\nrevision = 'main'\n", "model.revision", id="model"),
        pytest.param(DATA + "weights = [1, 2]\n" + PRIVACY, "data.weights", id="data"),
        pytest.param(
            MINIMAL + '[[nodes]]\ncountry = "DE"\ndata = "de.csv"\nweight = 2\n',
            "nodes.0.weight",
            id="nodes",
        ),
        pytest.param(
            MINIMAL
            + '[[nodes]]\ncountry = "DE"\ndata = "de.csv"\n'
            + '[[nodes]]\ncountry = "FR"\ndata = "fr.csv"\nepsilon = 1\n',
            "nodes.1.epsilon",
            id="second-node",
        ),
    ],
)
def test_unknown_key_is_an_error(tmp_path: Path, text: str, field: str) -> None:
    load_error(write_job(tmp_path, text), field, "unknown key")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(PRIVACY, "data", id="data-table"),
        pytest.param('[data]\ntext_column = "t"\n' + PRIVACY, "data.labels", id="labels"),
        pytest.param(DATA, "privacy", id="privacy-table"),
        pytest.param(DATA + "[privacy]\ndelta = 1e-5\n", "privacy.target_epsilon", id="epsilon"),
        pytest.param(MINIMAL + '[[nodes]]\ndata = "de.csv"\n', "nodes.0.country", id="country"),
    ],
)
def test_missing_required_key(tmp_path: Path, text: str, field: str) -> None:
    load_error(write_job(tmp_path, text), field, "missing")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(MINIMAL + '[train]\nbatch_size = "many"\n', "train.batch_size", id="str-int"),
        pytest.param(MINIMAL + "[train]\nrounds = 2.5\n", "train.rounds", id="fraction-int"),
        pytest.param('[data]\nlabels = "neg"\n' + PRIVACY, "data.labels", id="str-list"),
        pytest.param("[data]\nlabels = [1, 2]\n" + PRIVACY, "data.labels.0", id="int-label"),
        pytest.param("privacy = 3\n" + DATA, "privacy", id="scalar-table"),
        pytest.param(
            DATA + '[privacy]\ntarget_epsilon = "eight"\n', "privacy.target_epsilon", id="eps"
        ),
        pytest.param(MINIMAL + "[model]\nmax_length = []\n", "model.max_length", id="list-int"),
        pytest.param(MINIMAL + '[[nodes]]\ncountry = "DE"\ndata = 3\n', "nodes.0.data", id="path"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, field: str) -> None:
    load_error(write_job(tmp_path, text), field)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(MINIMAL + "[train]\nbatch_size = true\n", "train.batch_size", id="bool-int"),
        pytest.param(
            MINIMAL + "[train]\nlearning_rate = true\n", "train.learning_rate", id="bool-float"
        ),
        pytest.param(
            DATA + '[privacy]\ntarget_epsilon = "8"\n', "privacy.target_epsilon", id="str-epsilon"
        ),
        pytest.param(DATA + PRIVACY + 'delta = "1e-5"\n', "privacy.delta", id="str-delta"),
    ],
)
def test_wrong_type_is_not_coerced(tmp_path: Path, text: str, field: str) -> None:
    """A strict config does not turn ``true`` into a batch size or a string into an epsilon."""
    load_error(write_job(tmp_path, text), field)


@pytest.mark.parametrize(
    ("text", "field", "got"),
    [
        pytest.param(MINIMAL + "[train]\nbatch_size = 0\n", "train.batch_size", "0", id="batch"),
        pytest.param(MINIMAL + "[train]\nrounds = 0\n", "train.rounds", "0", id="rounds"),
        pytest.param(
            MINIMAL + "[train]\nlearning_rate = 0.0\n", "train.learning_rate", "0.0", id="lr"
        ),
        pytest.param(DATA + PRIVACY + "delta = 1\n", "privacy.delta", "1", id="delta-1"),
        pytest.param(DATA + PRIVACY + "delta = 0.0\n", "privacy.delta", "0.0", id="delta-0"),
        pytest.param(
            DATA + "[privacy]\ntarget_epsilon = -1.0\n", "privacy.target_epsilon", "-1.0", id="eps"
        ),
        pytest.param(
            DATA + "[privacy]\ntarget_epsilon = 0\n", "privacy.target_epsilon", "0", id="eps-0"
        ),
        pytest.param(
            DATA + PRIVACY + "max_grad_norm = 0\n", "privacy.max_grad_norm", "0", id="clip"
        ),
        pytest.param(
            DATA + PRIVACY + "max_grad_norm = inf\n", "privacy.max_grad_norm", "inf", id="clip-inf"
        ),
        pytest.param(
            DATA + PRIVACY + "max_grad_norm = nan\n", "privacy.max_grad_norm", "nan", id="clip-nan"
        ),
        pytest.param(
            DATA + PRIVACY + "max_grad_norm = 1e5\n",
            "privacy.max_grad_norm",
            "100000.0",
            id="clip-huge",
        ),
        pytest.param(MINIMAL + "[model]\nmax_length = 4\n", "model.max_length", "4", id="len-4"),
        pytest.param(MINIMAL + "[model]\nmax_length = 513\n", "model.max_length", "513", id="len"),
    ],
)
def test_out_of_range_value(tmp_path: Path, text: str, field: str, got: str) -> None:
    load_error(write_job(tmp_path, text), field, f"(got {got})")


def test_float16_transfer_of_a_full_update_is_refused_with_one_fix(tmp_path: Path) -> None:
    path = write_job(tmp_path, MINIMAL + '[train]\nupdate = "full"\ntransfer_dtype = "float16"\n')
    with pytest.raises(ConfigError) as refused:
        load_job(path)
    message = str(refused.value)
    assert message.startswith(f'{path}: train: transfer_dtype "float16" with update "full"')
    assert message.count("fix:") == 1


@pytest.mark.parametrize(
    ("train", "rounds"),
    [
        ("", 5),  # the default pipeline: a release, then five rounds of the head
        ('warm_start = "prototypes"', 5),
        ('update = "prototypes"', 1),
        ('update = "lora"', 3),
        ('update = "head"', 3),
    ],
)
def test_unset_rounds_follow_the_update(tmp_path: Path, train: str, rounds: int) -> None:
    assert load_job(write_job(tmp_path, MINIMAL + f"[train]\n{train}\n")).train.rounds == rounds


def test_a_release_in_more_than_one_round_is_refused_with_one_fix(tmp_path: Path) -> None:
    path = write_job(tmp_path, MINIMAL + '[train]\nupdate = "prototypes"\nrounds = 3\n')
    with pytest.raises(ConfigError) as refused:
        load_job(path)
    message = str(refused.value)
    assert message.startswith(f'{path}: train: update "prototypes" is one release')
    assert message.endswith("fix: rounds = 1")
    assert "\n" not in message
    ok = write_job(tmp_path, MINIMAL + '[train]\nupdate = "prototypes"\nrounds = 1\n')
    assert load_job(ok).train.update.value == "prototypes"


@pytest.mark.parametrize(
    ("text", "field", "got"),
    [
        pytest.param(
            MINIMAL + '[train]\nupdate = "adapter"\n', "train.update", "adapter", id="upd"
        ),
        pytest.param(
            DATA + PRIVACY + 'accountant = "gdp"\n', "privacy.accountant", "gdp", id="acc"
        ),
        pytest.param(
            DATA + PRIVACY + 'accountant = "PRV"\n', "privacy.accountant", "PRV", id="case"
        ),
    ],
)
def test_bad_enum(tmp_path: Path, text: str, field: str, got: str) -> None:
    load_error(write_job(tmp_path, text), field, f"(got '{got}')")


@pytest.mark.parametrize("country", ["de", "DEU", "Germany", "D", "", "D1"])
def test_bad_country_code(tmp_path: Path, country: str) -> None:
    text = MINIMAL + f'[[nodes]]\ncountry = "{country}"\ndata = "x.csv"\n'

    load_error(write_job(tmp_path, text), "nodes.0.country", repr(country))


def test_duplicate_countries(tmp_path: Path) -> None:
    nodes = "".join(
        f'[[nodes]]\ncountry = "{c}"\ndata = "{c.lower()}{i}.csv"\n'
        for i, c in enumerate(["DE", "FR", "DE"])
    )

    message = load_error(write_job(tmp_path, MINIMAL + nodes), None, "DE")

    assert "nodes" in message.removeprefix(str(tmp_path)), message
    assert "FR" not in message, message


def test_duplicate_labels(tmp_path: Path) -> None:
    text = '[data]\nlabels = ["neg", "pos", "neg"]\n' + PRIVACY

    load_error(write_job(tmp_path, text), "data.labels", "unique", "neg")


@pytest.mark.parametrize(
    "labels",
    [pytest.param("[]", id="none"), pytest.param('["only"]', id="one")],
)
def test_fewer_than_two_labels(tmp_path: Path, labels: str) -> None:
    text = f"[data]\nlabels = {labels}\n" + PRIVACY

    load_error(write_job(tmp_path, text), "data.labels", "at least 2")


def test_blank_label(tmp_path: Path) -> None:
    text = '[data]\nlabels = ["neg", "  "]\n' + PRIVACY

    load_error(write_job(tmp_path, text), "data.labels", "non-empty")


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("absent", id="no-folder"),
        pytest.param("empty", id="folder-without-config"),
        pytest.param("file", id="config-json-is-a-folder"),
    ],
)
def test_model_path_must_be_builtin_or_checkpoint(tmp_path: Path, setup: str) -> None:
    folder = tmp_path / "ckpt"
    if setup == "empty":
        folder.mkdir()
    elif setup == "file":
        (folder / "config.json").mkdir(parents=True)
    text = MINIMAL + '[model]\npath = "ckpt"\n'

    load_error(write_job(tmp_path, text), "model.path", "config.json", "ckpt")


def test_unreadable_sentence_pooling_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "1_Pooling" / "config.json").write_text("{oops", encoding="utf-8")
    text = MINIMAL + '[model]\npath = "ckpt"\n'

    load_error(write_job(tmp_path, text), "model.path", "1_Pooling/config.json", "unreadable")


def test_hub_model_name_is_not_a_checkpoint(tmp_path: Path) -> None:
    text = MINIMAL + '[model]\npath = "bert-base-uncased"\n'

    load_error(write_job(tmp_path, text), "model.path", "bert-base-uncased")


def test_require_nodes_without_nodes(tmp_path: Path) -> None:
    path = write_job(tmp_path, MINIMAL)
    job = load_job(path)

    with pytest.raises(ConfigError) as caught:
        job.require_nodes(path)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: nodes: "), message
    assert message.count("; fix: ") == 1, message


def test_simulation_requires_each_node_data_file(tmp_path: Path) -> None:
    path = write_job(tmp_path, MINIMAL + '[[nodes]]\ncountry = "DE"\n')
    job = load_job(path)
    job.require_nodes(path, with_data=False)  # deployment: nodes own their data

    with pytest.raises(ConfigError) as caught:
        job.require_nodes(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: nodes: no data file for DE; fix: "), message
    assert "\n" not in message


def test_require_nodes_with_nodes(tmp_path: Path) -> None:
    path = write_job(tmp_path, MINIMAL + '[[nodes]]\ncountry = "DE"\ndata = "de.csv"\n')

    load_job(path).require_nodes(path)


def test_job_model_validates_without_a_file() -> None:
    job = Job.model_validate({"data": {"labels": ["a", "b"]}, "privacy": {"target_epsilon": 1}})

    assert job.privacy.target_epsilon == pytest.approx(1.0)


def test_update_variants_and_wire_precision_are_choices(tmp_path: Path) -> None:
    job = load_job(
        write_job(tmp_path, MINIMAL + '[train]\nupdate = "lora-fa"\ntransfer_dtype = "float16"\n')
    )
    assert (job.train.update.value, job.train.transfer_dtype.value) == ("lora-fa", "float16")

    load_error(
        write_job(tmp_path, MINIMAL + '[train]\ntransfer_dtype = "bfloat16"\n'),
        "train.transfer_dtype",
        "'float32' or 'float16'",
    )


def test_a_target_epsilon_above_100_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("target_epsilon = 8.0", "target_epsilon = 1000.0")
    assert text != MINIMAL

    load_error(write_job(tmp_path, text), "privacy.target_epsilon", "less than or equal to 100")


def test_a_tracking_uri_is_the_simulations_choice_never_a_launched_jobs(tmp_path: Path) -> None:
    text = MINIMAL + '[tracking]\nuri = "sqlite:////etc/residency.db"\nexperiment = "triage"\n'
    path = write_job(tmp_path, text)

    assert load_job(path).tracking == TrackingSection(
        uri="sqlite:////etc/residency.db", experiment="triage"
    )
    with pytest.raises(ConfigError) as caught:
        load_job(path, remote=True)  # what `residency run` loads
    message = str(caught.value)
    assert message.startswith(f"{path}: tracking.uri: a launched job cannot choose where")
    assert "; fix: remove tracking.uri" in message
