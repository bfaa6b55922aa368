import pytest

from regimetry.config import DataConfig, ModelConfig, TrainConfig, parse_overrides


def test_defaults_construct_and_flatten():
    data = DataConfig()
    assert data.source == "sp500" and data.resolved_target == "forward_vol_regime"
    assert DataConfig(source="synthetic").resolved_target == "true_regime"
    flat = data.flat()
    assert flat["data.window_size"] == 30
    assert all(not isinstance(v, (list, tuple, dict)) for v in flat.values())
    assert ModelConfig().resolved_key_dim == 8


@pytest.mark.parametrize(
    "cls, field, value",
    [
        (DataConfig, "window_size", 0),
        (DataConfig, "stride", -1),
        (DataConfig, "source", "bloomberg"),
        (DataConfig, "val_fraction", 0.4),
        (DataConfig, "val_start", "not-a-date"),
        (ModelConfig, "num_heads", 0),
        (ModelConfig, "pooling", "median"),
        (ModelConfig, "dropout", 1.0),
        (TrainConfig, "learning_rate", 0.0),
        (TrainConfig, "monitor", "val_auc"),
    ],
)
def test_invalid_value_names_the_field(cls, field, value):
    kwargs = {field: value}
    if field == "val_start":
        kwargs["test_start"] = "2015-01-01"
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}|{field}"):
        cls(**kwargs)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="windowsize"):
        DataConfig.from_dict({"windowsize": 5})


def test_yaml_sections_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  window_size: 60\n  exclude_columns: [a, b]\nmodel:\n  d_model: 48\n")
    data = DataConfig.from_yaml(path, stride=2)
    assert (data.window_size, data.stride, data.exclude_columns) == (60, 2, ("a", "b"))
    assert ModelConfig.from_yaml(path).d_model == 48
    assert TrainConfig.from_yaml(path) == TrainConfig()
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        DataConfig.from_yaml(tmp_path / "missing.yaml")


def test_frozen_and_replace():
    cfg = ModelConfig()
    with pytest.raises(Exception):
        cfg.d_model = 3  # type: ignore[misc]
    assert cfg.replace(d_model=64).d_model == 64
    with pytest.raises(ValueError, match="d_model"):
        cfg.replace(d_model=-1)


def test_parse_overrides_types():
    out = parse_overrides(["model.d_model=64", "data.features=[a, b]", "data.csv_path=x=y.csv"])
    assert out == {"model": {"d_model": 64}, "data": {"features": ["a", "b"], "csv_path": "x=y.csv"}}
    with pytest.raises(ValueError, match="section.field=value"):
        parse_overrides(["d_model=3"])


def test_bad_dates_and_regime_counts_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="DataConfig.val_start"):
        DataConfig.from_dict(parse_overrides(["data.val_start=2010-13-01", "data.test_start=2011-01-01"])["data"])
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  end: 2018-02-30\n")
    with pytest.raises(ValueError, match="DataConfig.end"):
        DataConfig.from_yaml(path)
    path.write_text("data:\n  val_start: 2010-01-04\n  test_start: 2012-01-02\n")
    assert DataConfig.from_yaml(path).val_start == "2010-01-04"
    with pytest.raises(ValueError, match="num_regimes"):
        DataConfig(num_regimes=500)


def test_negative_seed_and_an_unused_csv_path_are_refused():
    """Found by a new-user check: train --set train.seed=-1 crashed after creating a run, and
    --set data.csv_path=... on an sp500 config silently trained on the S&P 500."""
    with pytest.raises(ValueError, match=r"TrainConfig.seed: must be an integer in \[0, 2\*\*32\), got -1"):
        TrainConfig(seed=-1)
    with pytest.raises(ValueError, match="csv_path: is read only with source='csv', but source is 'sp500'"):
        DataConfig(source="sp500", csv_path="/nonexistent.csv")


def test_mask_password_hides_the_urls_password_wherever_a_driver_message_quotes_it():
    from regimetry.config import mask_password

    url = "postgresql://user:s3cret@db.example:5432/optuna"
    message = 'connection to "db.example" failed for user:s3cret (password "s3cret" rejected)'
    assert mask_password(message, url) == 'connection to "db.example" failed for user:*** (password "***" rejected)'
    assert mask_password(message, "sqlite:///data/a@b.db") == message  # no credentials, nothing to mask
    assert mask_password("x", None) == "x"
    assert mask_password("p@ss fails", "mysql://u:p@ss@h/db") == "*** fails"  # an "@" inside the password
    assert mask_password("pa/ss fails", "postgresql://u:pa/ss@h/db") == "*** fails"  # an unencoded "/" in it
    # a driver that read the password only up to its first "@" quotes the rest as a host (fresh-user finding)
    assert mask_password("failed to resolve host 'ss@127.0.0.1'", "postgresql://u:p@ss@127.0.0.1:1/db") == \
        "failed to resolve host '***@127.0.0.1'"
    # a password given as a query parameter (fresh-user finding: printed in full)
    from regimetry.config import redact_url
    url = "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=s3cr3t2"
    assert redact_url(url) == "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=***"
    assert mask_password(f'connection to "{url}" failed (password s3cr3t2)', url) == \
        'connection to "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=***" failed (password ***)'
    # a short password is masked where it stands alone, not inside words (fresh-user finding: '***syco***g')
    message = "(psycopg.OperationalError) connection to u:p@127.0.0.1 port 1 failed; password=p"
    assert mask_password(message, "postgresql://u:p@127.0.0.1:1/db") == \
        "(psycopg.OperationalError) connection to u:***@127.0.0.1 port 1 failed; password=***"


def test_a_password_with_an_unencoded_at_sign_is_refused_before_any_connection():
    from regimetry.config import check_credentials, mask_password

    with pytest.raises(ValueError, match=r"^--storage 'postgresql://u:\*\*\*@127\.0\.0\.1:1/db': the password holds "
                                         r"an unencoded '@'.*percent-encode it as %40") as caught:
        check_credentials("postgresql://u:p@ss@127.0.0.1:1/db", "--storage")
    assert "ss@" not in str(caught.value)
    # also as a query parameter (fresh-user finding: SQLAlchemy then read the host from the password's tail)
    with pytest.raises(ValueError, match=r"password=\*\*\*': the password holds an unencoded '@'") as caught:
        check_credentials("postgresql://u@127.0.0.1:1/db?password=hunter2@xyzzy", "--storage")
    assert "xyzzy" not in str(caught.value) and "hunter2" not in str(caught.value)
    assert mask_password("failed to resolve host 'xyzzy'", "postgresql://u@h:1/db?password=hunter2@xyzzy") == \
        "failed to resolve host '***'"
    for fine in ("postgresql://u:p%40ss@h/db", "postgresql://u:pa/ss@h/db", "sqlite:///data/a@b.db",
                 "postgresql://u@corp:pw@h/db", None):
        check_credentials(fine, "--storage")  # SQLAlchemy reads these as meant: nothing to refuse
