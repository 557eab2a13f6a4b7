"""`vitals metrics`: an app's in-app stats, from its store file or from the running app.

Thin: options become an `appvitals.stats.query.Query`; the snapshot is read with
`query.read_store` (`--db`) or `query.read_url` (`--url`) and shown by `appvitals.stats.render`.
Options it does not define are the shortcuts of Spacedrive's `sd sync metrics`: `--peer B`
(any label the store knows, as `--where peer=B`) and `--errors` (any group, as `--group errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterator

import click
import msgspec

from appvitals.cli.app import BadUsage, VitalsError
from appvitals.stats import query as _query
from appvitals.stats import render as _render
from appvitals.stats import snapshot as _snap

Reader = Callable[[_query.Query], _snap.Snapshot]


@contextlib.contextmanager
def _open_source(db: str | None, key: str | None, url: str | None, token: str | None,
                 table_prefix: str = "", namespace: str = "") -> Iterator[Reader]:
    """A function Query -> Snapshot over the chosen source, with errors turned into one-liners."""
    if db and url:
        raise BadUsage("give either --db FILE or --url URL, not both")
    if url and namespace:
        raise BadUsage("--namespace picks a registry of a store (--db); a running app (--url) serves one")
    if url:
        yield lambda q: _query.read_url(url, q, token)
        return
    if not db:
        raise BadUsage("give --db FILE (the app's store) or --url URL (the running app, e.g. http://127.0.0.1:9464)")
    if not os.path.isfile(db):
        raise BadUsage(f"no store file at {db!r}")
    from appvitals.stats.store import Store, StoreError, StoreKeyError

    try:
        whole = Store.open_readonly(db, key=key or None, table_prefix=table_prefix)
        known = whole.namespaces()
    except StoreKeyError as exc:
        raise BadUsage(_key_message(db, key, exc))
    except StoreError as exc:
        raise VitalsError(f"cannot read {db}: {exc}")
    try:
        if namespace and namespace not in known:
            raise BadUsage(f"no namespace {namespace!r} in {db}; namespaces: {', '.join(known) or 'none'}")
        store = whole.namespace(namespace)

        def read(q: _query.Query) -> _snap.Snapshot:
            try:
                return _query.read_store(store, q)
            except StoreKeyError as exc:
                raise BadUsage(_key_message(db, key, exc))
            except StoreError as exc:
                raise VitalsError(f"cannot read {db}: {exc}")

        if known and not namespace and not read(_query.Query()).metrics:
            click.echo(f"vitals: {db} keeps its stats under namespaces; pick one with --namespace "
                       f"({', '.join(known)})", err=True)
        yield read
    finally:
        whole.close()


def _key_message(db: str, key: str | None, exc: Exception) -> str:
    if key:
        return f"wrong key for the encrypted store {db} (check --key / VITALS_STORE_KEY)"
    return f"{db} is encrypted: pass --key KEY or set VITALS_STORE_KEY"


def parse_shortcuts(args: list[str]) -> list[tuple[str, str | None]]:
    """['--peer', 'B', '--errors', '--model=entry'] -> [('peer', 'B'), ('errors', None), ('model', 'entry')]:
    an option with a value (the next word when it is no option) or a bare flag; raises BadUsage on a
    word that is no option."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("--") or len(word) < 3:
            raise BadUsage(f"unexpected argument {word!r} (options start with --)")
        name, sep, value = word[2:].partition("=")
        if sep:
            out.append((name, value))
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((name, args[i + 1]))
            i += 1
        else:
            out.append((name, None))
        i += 1
    return out


def resolve_shortcuts(shortcuts: list[tuple[str, str | None]], snap: _snap.Snapshot) -> tuple[list[str], list[str]]:
    """Shortcut options -> (where items, groups), by what the snapshot knows: `--LABEL VALUE` is
    `--where LABEL=VALUE`, `--GROUP` is `--group GROUP`. Unknown ones raise BadUsage naming the
    known labels and groups."""
    labels = _snap.label_keys(snap)
    groups = {m.group.split("/", 1)[0] for m in snap.metrics if m.group}  # sections ("operations/receives": operations)
    where: list[str] = []
    chosen: list[str] = []
    for name, value in shortcuts:
        if value is not None and name in labels:
            where.append(f"{name}={value}")
        elif name in groups:
            if value is not None:
                raise BadUsage(f"--{name} is a group and takes no value (got {value!r})")
            chosen.append(name)
        else:
            if name in labels:
                raise BadUsage(f"--{name} needs a value (e.g. --{name} VALUE), as --where {name}=VALUE")
            known_labels = ", ".join(f"--{k}" for k in sorted(labels)) or "none"
            known_groups = ", ".join(f"--{g}" for g in sorted(groups)) or "none"
            raise BadUsage(f"no such option --{name}; labels: {known_labels}; groups: {known_groups}")
    return where, chosen


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@click.command("metrics", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--db", metavar="FILE", help="The app's store file (SQLite; SQLCipher with a key).")
@click.option("--key", metavar="KEY", envvar="VITALS_STORE_KEY", show_envvar=True,
              help="Key of an encrypted store.")
@click.option("--url", metavar="URL", help="A running app served by appvitals.serve (e.g. http://127.0.0.1:9464).")
@click.option("--token", metavar="TOKEN", envvar="VITALS_TOKEN", show_envvar=True, help="Bearer token for --url.")
@click.option("--since", metavar="WHEN", help='Start of the window: "1 hour ago", "90m", "yesterday", ISO 8601...')
@click.option("--until", metavar="WHEN", help="End of the window (default: now).")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE", help="Only series with this label (repeatable).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME", help="Only metrics matching this glob (repeatable).")
@click.option("--group", "groups", multiple=True, metavar="NAME", help="Only this section/group (repeatable).")
@click.option("--scope", type=click.Choice(_query.SCOPES), default="all", show_default=True,
              help="all runs, this session (the latest run) or past sessions.")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot JSON (SPEC section 4) and nothing else.")
@click.option("--watch", type=click.FloatRange(min=0.2), is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Refresh in place every SECONDS (default 2) until Ctrl-C.")
@click.option("--compare", metavar="WHEN",
              help='Compare with an earlier window of the same length: alone, "1 day ago" compares the last '
                   "day with the day before; with --since, WHEN is where the earlier window starts.")
@click.option("--current", "keys", flag_value="current",
              help="Only series (servers, users...) used in this session of the app.")
@click.option("--previous", "keys", flag_value="previous",
              help="Only series used in earlier sessions and not in this one.")
@click.option("--table-prefix", default="", metavar="PREFIX",
              help="The stats live in the app's own database, in tables named PREFIX* (e.g. appvitals_).")
@click.option("--title", default="Metrics", show_default=True, help="Title of the view, shown exactly as given.")
@click.option("--namespace", metavar="NAME", default="",
              help="Which registry of a store holding several (reg.attach(store, namespace=NAME)), e.g. one library.")
@click.pass_context
def command(ctx, db, key, url, token, since, until, where, metrics, groups, scope, as_json, watch, compare, keys,
            table_prefix, title, namespace) -> None:
    """In-app stats, laid out like Spacedrive's sync metrics (or as JSON), live with --watch.

    \b
    Shortcuts, as in `sd sync metrics`:
      --LABEL VALUE   any label the app uses: --peer B is --where peer=B
      --GROUP         any group: --errors is --group errors (--state, --operations...)
    """
    shortcuts = parse_shortcuts(list(ctx.args))
    where, groups = list(where), list(groups)

    def queries(now: dt.datetime) -> tuple[_query.Query, _query.Query | None]:
        q = _query.build(scope, since, until, where, metrics, groups, now=now, keys=keys)
        if not compare:
            return q, None
        return _query.previous_window(q, _query.parse_when(compare, "compare", now), now)

    warned = []

    def take(read: Reader) -> tuple[_snap.Snapshot, _snap.Snapshot | None]:
        current_q, previous_q = queries(dt.datetime.now(dt.timezone.utc))
        current = read(current_q)
        if previous_q is None:
            return current, None
        try:
            return current, read(previous_q)
        except (VitalsError, _query.SourceError) as exc:  # e.g. no history that old: the current window alone
            if not warned:
                warned.append(True)
                why = exc.format_message() if isinstance(exc, VitalsError) else _one_line(exc)
                click.echo(f"vitals: nothing to compare with: {why}", err=True)
            return current, None

    try:
        queries(dt.datetime.now(dt.timezone.utc))  # bad options fail before any I/O
        with _open_source(db, key, url, token, table_prefix, namespace) as read:
            if shortcuts:  # what they mean depends on the labels and groups the app has
                more_where, more_groups = resolve_shortcuts(shortcuts, read(_query.Query(scope=scope)))
                where += more_where
                groups += more_groups
                queries(dt.datetime.now(dt.timezone.utc))
            if watch is not None:
                _watch(read, take, watch, as_json, title, groups, bool(compare), namespace)
                return
            current, previous = take(read)
            _emit(current, previous, as_json, title, groups, comparing=bool(compare), namespace=namespace)
    except _query.QueryError as exc:
        raise BadUsage(_one_line(exc))
    except _query.SourceError as exc:
        raise VitalsError(_one_line(exc))


def _emit(current: _snap.Snapshot, previous: _snap.Snapshot | None, as_json: bool, title: str, groups,
          comparing: bool = False, namespace: str = "") -> None:
    if as_json:
        current = _query.without_distinct_sketches(current)
        previous = _query.without_distinct_sketches(previous) if previous is not None else None
        doc = {"current": current, "previous": previous} if comparing else current
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        sys.stdout.flush()
        return
    console = _render.make_console()
    console.print(_render.render(current, title=title, previous=previous, order=tuple(groups), namespace=namespace))


def _watch(read: Reader, take, interval: float, as_json: bool, title: str, groups, comparing: bool,
           namespace: str = "") -> None:
    """Refresh until Ctrl-C (exit 0). A failed read shows on the screen and is retried."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    if as_json:  # one JSON document per refresh (JSON lines)
        try:
            while True:
                current, previous = take(read)
                _emit(current, previous, True, title, groups, comparing)
                time.sleep(interval)
        except KeyboardInterrupt:
            return

    console = _render.make_console()
    footer = Text(f"Refreshing every {_render.fmt_duration(interval)} · Ctrl-C to quit", style="dim")
    current, previous = take(read)  # a first failure is an error like without --watch
    last = _render.render(current, title=title, previous=previous, order=tuple(groups), namespace=namespace)

    def view() -> Group:
        nonlocal last
        try:
            current, previous = take(read)
        except (_query.SourceError, click.ClickException) as exc:  # the app restarting, say: keep trying
            message = exc.format_message() if isinstance(exc, click.ClickException) else _one_line(exc)
            return Group(last, Text(""), Text(f"⚠ {message} (retrying)", style="yellow"), footer)
        last = _render.render(current, title=title, previous=previous, order=tuple(groups), namespace=namespace)
        return Group(last, Text(""), footer)

    if not console.is_terminal:  # a pipe or a file: no cursor to move, print each refresh in turn
        try:
            console.print(last)
            while True:
                time.sleep(interval)
                console.print(Text(""))
                console.print(Group(*view().renderables[:-1]))  # no "Ctrl-C" footer in a file
                console.file.flush()
        except KeyboardInterrupt:
            return
    try:
        with Live(Group(last, Text(""), footer), console=console, auto_refresh=False, redirect_stdout=False,
                  redirect_stderr=False, vertical_overflow="crop") as live:
            while True:
                time.sleep(interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        pass
