#!/usr/bin/env python3
"""Summarises a `perf record -g` profile of the latchkey server (bench/run --profile).

Prints, as shares of all server CPU samples:
  1. CPU by thread group (tokio workers, sled IO threads, the group-commit flusher, ...);
  2. self time by category (kernel by thread group, allocation, sled, JWT signing, h2/hyper,
     tonic/prost, tokio, serde_json, tracing, hashing, ...);
  3. inclusive time of the functions that matter for the hot paths.
usage: profile.py PERF_DATA
"""

import re
import subprocess
import sys
from collections import defaultdict


def perf_report(data, *args):
    out = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "-g", "none", "--percent-limit", "0", *args],
        capture_output=True,
        text=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rows.append(line.rstrip())
    return rows


def thread_group(comm):
    comm = re.sub(r"-?\d+$", "", comm.strip())
    return comm or "?"


CATEGORIES = [
    ("allocation (malloc/free)", r"(^|[^a-z])(_int_malloc|_int_free|malloc|cfree|free|realloc|malloc_consolidate|unlink_chunk|__libc_calloc|calloc|alloc::raw_vec|__rust_alloc|__rust_dealloc|tcache)"),
    ("memcpy/memmove/memcmp", r"__mem(move|cpy|set|cmp)"),
    ("JWT signing/verifying (ed25519, curve25519, sha512)", r"curve25519|ed25519|sha512|Sha512"),
    ("JSON (serde_json)", r"serde_json|serde::"),
    ("sha256/hmac", r"sha2::|sha256|Sha256|hmac"),
    ("sled (tree, pagecache, transactions, IO)", r"sled::|crossbeam_epoch|crossbeam"),
    ("h2 / hyper (HTTP/2)", r"\bh2::|hyper::|hyper_util::|httparse|http::"),
    ("tonic / prost / tower (gRPC)", r"tonic|prost|tower"),
    ("tokio runtime", r"tokio::"),
    ("tracing", r"tracing"),
    ("metrics (prometheus-client)", r"prometheus|metrics::"),
    ("latchkey code", r"latchkey::"),
    ("locks (parking_lot, futex in user space)", r"parking_lot|pthread_mutex|__lll_lock|syscall$"),
]


def main():
    data = sys.argv[1]
    # 1. by thread group
    groups = defaultdict(float)
    for row in perf_report(data, "--no-children", "--sort", "comm"):
        match = re.match(r"\s*([\d.]+)%\s+(.*)$", row)
        if match:
            groups[thread_group(match.group(2))] += float(match.group(1))
    print("CPU samples by thread group:")
    for name, share in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {share:6.2f}%  {name}")

    # 2. self time by category
    categories = defaultdict(float)
    uncategorised = defaultdict(float)
    for row in perf_report(data, "--no-children", "--sort", "comm,dso,sym"):
        match = re.match(r"\s*([\d.]+)%\s+(\S+(?: \S+)*?)\s{2,}(\S+)\s+\[(.)\]\s+(.*)$", row)
        if not match:
            continue
        share, comm, dso, kind, symbol = float(match.group(1)), match.group(2), match.group(3), match.group(4), match.group(5).strip()
        if kind == "k":
            categories[f"kernel, in {thread_group(comm)} threads"] += share
            continue
        for name, pattern in CATEGORIES:
            if re.search(pattern, symbol):
                categories[name] += share
                break
        else:
            categories["other user space"] += share
            uncategorised[symbol[:90]] += share
    print("\nSelf time by category:")
    for name, share in sorted(categories.items(), key=lambda kv: -kv[1]):
        print(f"  {share:6.2f}%  {name}")
    print("\n  largest 'other user space' symbols:")
    for symbol, share in sorted(uncategorised.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {share:6.2f}%  {symbol}")

    # 3. inclusive time of key functions
    wanted = [
        ("gRPC handler VerifyToken", r"PasswordlessApi as .*>::verify_token"),
        ("gRPC handler IssueLoginLink", r"PasswordlessApi as .*>::issue_login_link"),
        ("store: redeem_link", r"SledStore as .*>::redeem_link"),
        ("store: create link / user", r"SledStore as .*>::(create_link|issue_link|insert_link|create_user|put_link|save_link|store_link)"),
        ("sled transaction (closure + commit)", r"^sled::transaction::Transactional::transaction$"),
        ("sled transaction commit", r"^sled::transaction::TransactionalTrees::commit$"),
        ("sled Tree::view_for_key (index walk)", r"^sled::tree::Tree::view_for_key$"),
        ("flusher thread (run_flusher: sled flush + fdatasync)", r"latchkey::store::commit::run_flusher|^run_flusher"),
        ("flusher: sled flush (pagecache::iobuf::flush)", r"^sled::pagecache::iobuf::flush$"),
        ("flusher: fdatasync", r"^(__GI_fdatasync|__x64_sys_fdatasync|<std::fs::File>::sync_data)"),
        ("sync_file_range (sled IO threads)", r"^sync_file_range$"),
        ("pwrite (sled IO threads)", r"^(__libc_pwrite|pwrite64|__pwrite64)"),
        ("session JWT: issue_session_jwt (claims + signing)", r"issue_session_jwt"),
        ("JWT signing: latchkey::jwt::sign", r"^latchkey::jwt::sign$"),
        ("ed25519 signing", r"ed25519_dalek::signing::SigningKey as signature::signer::Signer"),
        ("JWT verifying: latchkey::jwt::verify", r"^latchkey::jwt::verify"),
        ("serde_json serialisation", r"^serde_json::ser::|serde_json::to_"),
        ("serde_json parsing", r"^serde_json::de::"),
        ("record codec: encode (JSON)", r"^latchkey::store::codec::encode$"),
        ("record codec: decode (JSON)", r"^latchkey::store::codec::decode$"),
        ("API-key interceptor", r"ApiKeyCheck"),
        ("tracing spans/events", r"^tracing"),
        ("h2 connection task", r"h2::proto::connection::Connection<T,P,B>>::poll|<h2::server::Connection"),
        ("h2 frame writes (FramedWrite::flush)", r"h2::codec::framed_write::FramedWrite<T,B>::flush"),
        ("sled IO thread pool (sled::threadpool::perform_work)", r"sled::threadpool::perform_work"),
        ("block-layer submission (blk_mq_flush_plug_list)", r"blk_mq_flush_plug_list"),
        ("virtio notify (iowrite16)", r"^iowrite16$"),
        ("context switches (finish_task_switch)", r"finish_task_switch"),
        ("futex syscalls", r"__x64_sys_futex"),
    ]
    inclusive = {}
    for row in perf_report(data, "--children", "--sort", "sym"):
        match = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[(.)\]\s+(.*)$", row)
        if not match:
            continue
        share, symbol = float(match.group(1)), match.group(4).strip()
        symbol = re.sub(r"\s+$", "", symbol)
        for label, pattern in wanted:
            if re.search(pattern, symbol):
                inclusive[label] = max(inclusive.get(label, 0.0), share)
    print("\nInclusive time (self + callees) of key functions:")
    for label, _ in wanted:
        if label in inclusive:
            print(f"  {inclusive[label]:6.2f}%  {label}")


if __name__ == "__main__":
    main()
