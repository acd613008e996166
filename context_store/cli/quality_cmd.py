"""``context-store validate`` (the data quality gate for CI) and ``context-store drift NAME``.

``validate`` runs every expectation against the offline tables and exits 1 on any failure, one line
per failure (view.feature, expectation, observed value). Named ``validate`` because no registry
command uses the name: ``plan`` already checks the definitions themselves. See docs/data-quality.md.
"""

from __future__ import annotations

import sys

import click

from ._common import echo_json, handle_errors, repo_options, store_from_ctx

__all__ = ["drift", "validate"]


@click.command("validate")
@click.option("--view", "views", multiple=True, metavar="VIEW", help="Only this feature view (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@repo_options
@handle_errors
def validate(views: tuple[str, ...], as_json: bool) -> None:
    """Run the data quality expectations on the offline data; exit 1 when any fails (for CI)."""
    report = store_from_ctx().validate(list(views) or None)
    if as_json:
        echo_json(report.to_dict())
    else:
        for line in report.lines():
            click.echo(line)
        checked = sum(len(r.results) for r in report.runs)
        if report.passed:
            click.echo(f"ok: {checked} expectations on {len(report.runs)} views passed")
    if not report.passed:
        sys.exit(1)


@click.command("drift")
@click.argument("name")
@click.option("--start", default=None, metavar="TIME", help="Training data from this time (ISO-8601).")
@click.option("--end", default=None, metavar="TIME", help="Training data before this time (ISO-8601).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@repo_options
@handle_errors
def drift(name: str, start: str | None, end: str | None, as_json: bool) -> None:
    """PSI per feature of view or service NAME: training data against what is served."""
    report = store_from_ctx().drift_report(name, start=start, end=end)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"{report.kind} {report.name}: reference {report.reference}; served {report.served}")
    for f in report.features:
        value = "-" if f.psi is None else f"{f.psi:.4f}"
        note = f"  ({f.note})" if f.note else ""
        click.echo(f"  {f.feature:<40} psi={value:<8} {f.level:<9} ref={f.reference_rows} served={f.served_rows}{note}")
