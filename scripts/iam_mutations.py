#!/usr/bin/env python3
"""Delete each IAM grant the code or infra/ makes, one at a time, and see whether a test turns red
(issue 12: "Deleting any one IAM grant ... turns at least one test red").

Each mutation is applied to a scratch copy of HEAD (``git archive``), never to the working tree.
The grants:
- every ``resource "google_*_iam_member"`` block in infra/ (the block is deleted);
- every role in a function's ``project_roles`` and in ``gateway_provisioning_project_roles``
  (the role string is deleted from its list);
- the grants provisioning makes at runtime (shared/services/provisioning.py: the subscription
  binding, the Pub/Sub service agent's member, the generated-objects and study-bucket bindings).

Usage: ``scripts/iam_mutations.py [--only SUBSTRING] [--tests 'pytest args']``. Prints one line per
mutation: RED (and the first failing test) or GREEN (a grant no test needs: a gap). Exit status 1
if any mutation stays green.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The enforcement tests first (with -x a red mutation stops at its first failure), then the
# static infra checks, provisioning and the end-to-end paths.
DEFAULT_TESTS = ("tests/integration/test_iam_enforced.py tests/unit tests/integration/test_provisioning.py "
                 "tests/e2e")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repo
    old: str  # the text removed or replaced
    new: str = ""
    at: int = -1  # where ``old`` starts in the file; -1: it must occur exactly once


def _block_end(text: str, start: int) -> int:
    """Index just past the '}' closing the block whose '{' is the first after ``start``."""
    depth, i = 0, text.index("{", start)
    while True:
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        elif ch == '"':  # skip strings (may hold braces, e.g. ${...})
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        i += 1


def infra_mutations(root: Path) -> list[Mutation]:
    out: list[Mutation] = []
    for tf in sorted((root / "infra").glob("*.tf")):
        text = tf.read_text()
        rel = str(tf.relative_to(root))
        for m in re.finditer(r'^resource "(google_\w+_iam_(?:member|binding|policy))" "(\w+)" \{', text, re.M):
            out.append(Mutation(f"infra {m.group(1)}.{m.group(2)}", rel, text[m.start():_block_end(text, m.start())],
                                at=m.start()))
        # Role lists: project_roles of each function, and the provisioners' extra project roles.
        for m in re.finditer(r'^(\s*)(project_roles|gateway_provisioning_project_roles)\s*=\s*\[([^\]]*)\]', text, re.M):
            owner = _enclosing_key(text, m.start()) if m.group(2) == "project_roles" else "provisioners"
            for role in re.findall(r'"([^"]+)"', m.group(3)):
                line = m.group(0)
                kept = [r for r in re.findall(r'"[^"]+"', m.group(3)) if r != f'"{role}"']
                new = line[:line.index("[") + 1] + ", ".join(kept) + "]"
                out.append(Mutation(f"infra project role {role} of {owner}", rel, line, new, at=m.start()))
    return out


def _enclosing_key(text: str, pos: int) -> str:
    """The name of the map entry (``name = {``) a position sits in."""
    depth, i = 0, pos
    while i > 0:
        i -= 1
        if text[i] == "}":
            depth += 1
        elif text[i] == "{":
            if depth == 0:
                line = text[text.rfind("\n", 0, i) + 1:i]
                return line.strip().rstrip("=").strip()
            depth -= 1
    return "?"


CODE_MUTATIONS = [
    Mutation("code subscription_binding (gateway subscriber)", "shared/services/provisioning.py",
             "c.pubsub.grant_subscription_role(res.subscription_id, SUBSCRIBER_ROLE, self._members(email))", "pass"),
    Mutation("code Pub/Sub service agent on the gateway subscription", "shared/services/provisioning.py",
             'return [f"serviceAccount:{email}"] + ([f"serviceAccount:{agent}"] if agent else [])',
             'return [f"serviceAccount:{email}"] + ([] if agent else [])'),  # agent still used: no lint error
    # The gateway's read grants are on managed folders (docs/scale.md, "Bucket IAM principals").
    Mutation("code bucket_binding (its managed folder of the generated-objects bucket)", "shared/services/provisioning.py",
             "c.folders.grant_reader(s.objects_bucket, res.objects_prefix, member)", "pass"),
    Mutation("code study_binding (its group's managed folder of the study bucket)", "shared/services/provisioning.py",
             "c.folders.grant_reader(s.study_bucket, res.study_prefix, member)", "pass"),
]


def run(mutation: Mutation, scratch: Path, tests: str) -> tuple[bool, str, float]:
    target = scratch / mutation.path
    original = target.read_text()
    at = mutation.at if mutation.at >= 0 else original.find(mutation.old)
    if original[at:at + len(mutation.old)] != mutation.old or (mutation.at < 0 and original.count(mutation.old) != 1):
        return False, "mutation text not found once (script out of date)", 0.0
    target.write_text(original[:at] + mutation.new + original[at + len(mutation.old):])
    started = time.monotonic()
    try:
        proc = subprocess.run([str(scratch / ".venv/bin/python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               *shlex.split(tests)], cwd=scratch, capture_output=True, text=True, timeout=3600)
    finally:
        target.write_text(original)
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    return proc.returncode != 0, failed.group(1) if failed else proc.stdout.strip().splitlines()[-1:], \
        time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run the mutations whose name contains this")
    ap.add_argument("--tests", default=DEFAULT_TESTS, help="pytest arguments (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = ap.parse_args(argv)

    mutations = [m for m in infra_mutations(REPO) + CODE_MUTATIONS if args.only in m.name]
    if args.list:
        print("\n".join(m.name for m in mutations))
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="iam-mutations-"))
    try:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
        for venv in (".venv", ".venv-checkov"):
            if (REPO / venv).exists():
                (scratch / venv).symlink_to((REPO / venv).resolve())
        # The unmutated copy must pass the same tests, or every RED below means nothing.
        baseline = run(Mutation("baseline", "README.md", "", at=0), scratch, args.tests)
        print(f"{'BASELINE FAILS' if baseline[0] else 'baseline green'} {baseline[2]:6.0f} s  {baseline[1]}", flush=True)
        if baseline[0]:
            return 2
        green = 0
        for m in mutations:
            red, why, secs = run(m, scratch, args.tests)
            green += not red
            print(f"{'RED  ' if red else 'GREEN'} {secs:6.0f} s  {m.name}  ->  {why}", flush=True)
        print(f"{len(mutations)} grants deleted one at a time: {len(mutations) - green} turned a test red, {green} did not")
        return 1 if green else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
