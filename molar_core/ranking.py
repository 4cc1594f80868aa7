"""Exact full ranking in torch: what the evaluate stage and the validation used for early stopping rank with,
and the reference the FAISS path is tested against. History items are masked unless the protocol says otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import torch


SCORE_BLOCK_BYTES = 256 << 20  # a chunk of users x all items scores stays under this, whatever the catalogue size
FLOAT_COUNT_LIMIT = 2 ** 24  # float32 sums of 0/1 are exact integers below this


def user_chunk(num_items: int, chunk: int | None) -> int:
    """Users scored at once: `chunk`, or as many as keep one (users x items) float32 block under 256 MiB."""
    return chunk or max(1, min(4096, SCORE_BLOCK_BYTES // (4 * max(1, num_items))))


def history_index(histories: list[list[int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of every history item in a block of users' scores (item id x is column x - 1)."""
    rows = torch.tensor([i for i, h in enumerate(histories) for _ in h], dtype=torch.long, device=device)
    cols = torch.tensor([x - 1 for h in histories for x in h], dtype=torch.long, device=device)
    return rows, cols


@torch.no_grad()
def score_blocks(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None,
                 chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(first user, scores) for each block of users against items 1..N, history items at -inf when histories are
    given. Every block is written into one preallocated buffer (read each before asking for the next) and
    history items are set in place: no fresh 256 MiB block, dense mask and masked copy for every chunk."""
    chunk = user_chunk(items.shape[0], chunk)
    buf = torch.empty(min(chunk, len(users)), items.shape[0], dtype=users.dtype, device=users.device)
    minus_inf = torch.tensor(float("-inf"), dtype=buf.dtype, device=buf.device)
    for s in range(0, len(users), chunk):
        block = users[s:s + chunk]
        sc = torch.matmul(block, items.T, out=buf[:len(block)])
        if histories is not None:
            sc.index_put_(history_index(histories[s:s + chunk], sc.device), minus_inf)
        yield s, sc


def target_ranks(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None,
                 targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """0-based rank of each target among the unmasked items, ties ranked pessimistically: the number of other
    unmasked items scoring at least as high as the target. Counting only strictly higher items would put every
    target first under a collapsed model (all scores equal) and ahead of items with identical vectors (identical
    item text). NaN vectors are refused: NaN compares false, so every target would rank first."""
    for name, v in (("user", users), ("item", items)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} vectors contain NaN or inf: ranks would be meaningless")
    # The comparison is written as float32 0/1 into one reused buffer and summed as floats: summing a bool
    # tensor converts every element to int64 and took 8x longer than the comparison (bench/ranking.py). Float32
    # sums of 0/1 are exact integers while they stay below 2**24, so larger catalogues count the slow way.
    float_count = items.shape[0] < FLOAT_COUNT_LIMIT
    # Both counts include the target itself (its score equals itself; scores are finite), hence the - 1.
    out, at_least = [], None
    for s, sc in score_blocks(users, items, histories, chunk):
        t = sc.gather(1, (targets[s:s + len(sc)] - 1).unsqueeze(1).to(sc.device))
        if float_count:
            at_least = torch.empty(sc.shape, device=sc.device) if at_least is None else at_least
            out.append(torch.ge(sc, t, out=at_least[:len(sc)]).sum(1).long().cpu() - 1)
        else:
            out.append((sc >= t).sum(1).cpu() - 1)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


_SHARED: dict = {}  # a ranking worker process's items and chunk, set once by its initializer


def _init_ranking_worker(items: torch.Tensor, chunk: int, threads: int) -> None:
    """Each worker process receives the items once (not with every slice) and keeps its thread count."""
    torch.set_num_threads(threads)
    _SHARED.update(items=items, chunk=chunk)


def _ranks_of_slice(args: tuple) -> torch.Tensor:
    """One slice of sharded_target_ranks in a worker (a top-level function: worker processes import it)."""
    users, histories, targets = args
    return target_ranks(users, _SHARED["items"], histories, targets, _SHARED["chunk"])


def _worker_context():
    """forkserver: ranking workers fork from a server that imported this module once (torch included) and nothing
    of the caller's __main__ (a stage imports far more), so after the first call workers start at once."""
    import torch.multiprocessing as tmp

    context = tmp.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def start_ranking_workers() -> None:
    """Start the server that sharded_target_ranks' workers fork from now, in the background: its imports (seconds)
    then overlap the caller's own work (the evaluate stage loads its data and vectors meanwhile)."""
    from multiprocessing import forkserver

    _worker_context()
    forkserver.ensure_running()


def sharded_target_ranks(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None,
                         targets: torch.Tensor, chunk: int | None = None, workers: int = 1) -> torch.Tensor:
    """target_ranks with the users shared among `workers`: this process and workers - 1 worker processes, each
    holding every item. Users are cut into slices of whole user chunks, so every block of scores is the same
    matrix product as in one process and the ranks are identical, not merely close; the slices are handed out
    as workers become free, so this process ranks while the others still start (importing torch takes seconds)
    and nobody waits at the end for a worker that started late. Each worker runs torch with cores // workers
    threads."""
    import threading
    from concurrent.futures import Future, ProcessPoolExecutor

    from molar_core.io import usable_cpus

    chunk = user_chunk(items.shape[0], chunk)
    blocks = -(-len(users) // chunk)
    if workers <= 1 or blocks < 2:
        return target_ranks(users, items, histories, targets, chunk)
    workers = min(workers, blocks)
    cuts, s = [], 0  # guided: each slice a share of what is left (whole chunks), so the last ones are small and
    while s < len(users):  # nobody waits long at the end, while the first are large and cost little to hand out
        size = max(1, -(-(len(users) - s) // (2 * workers * chunk))) * chunk
        cuts.append((s, s + size))
        s += size
    out: list[torch.Tensor | None] = [None] * len(cuts)
    lock, todo = threading.Lock(), iter(range(len(cuts)))

    def take() -> int | None:
        with lock:
            return next(todo, None)

    def share(i: int, copy: bool = False) -> tuple:
        """Slice i's (users, histories, targets); copy=True for a worker: sending a tensor moves its storage
        to shared memory, which must not happen to the storage this process is ranking from at that moment."""
        s, e = cuts[i]
        u, t = users[s:e], targets[s:e]
        if copy:
            u, t = u.clone(), t.clone()
        return u, histories[s:e] if histories is not None else None, t

    threads = max(1, usable_cpus() // workers)
    shared = items.clone().share_memory_()  # sent to each worker as it starts, while this process ranks with `items`
    pool = ProcessPoolExecutor(workers - 1, mp_context=_worker_context(), initializer=_init_ranking_worker,
                               initargs=(shared, chunk, threads))
    try:
        errors: list[BaseException] = []

        def feed() -> None:
            """Keeps one worker process busy, with the next slice already sent while it ranks one."""
            def send() -> tuple[int, Future] | None:
                if (i := take()) is None:
                    return None
                return i, pool.submit(_ranks_of_slice, share(i, copy=True))
            try:
                queued = [job for job in (send(), send()) if job is not None]
                while queued:
                    i, job = queued.pop(0)
                    out[i] = job.result()
                    if (nxt := send()) is not None:
                        queued.append(nxt)
            except BaseException as err:  # noqa: BLE001  raised again in the calling thread below
                errors.append(err)

        feeders = [threading.Thread(target=feed, daemon=True) for _ in range(workers - 1)]
        for feeder in feeders:
            feeder.start()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            while (i := take()) is not None:  # this process is a worker too
                u, h, t = share(i)
                out[i] = target_ranks(u, items, h, t, chunk)
        except BaseException:
            with lock:  # the feeders stop after their current slice
                todo = iter(())
            raise
        finally:
            torch.set_num_threads(before)
            for feeder in feeders:
                feeder.join()
    finally:  # every slice is back (or failed): the workers need not be waited for while they exit
        pool.shutdown(wait=False, cancel_futures=True)
    if errors:
        raise errors[0]
    return torch.cat(out)


def topk_items(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None, k: int,
               chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids (1-based) and scores per user, by brute force."""
    ids, scores = [], []
    for _, sc in score_blocks(users, items, histories, chunk):
        v, i = sc.topk(min(k, sc.shape[1]), dim=1)
        ids.append((i + 1).cpu())
        scores.append(v.cpu())
    return torch.cat(ids), torch.cat(scores)
