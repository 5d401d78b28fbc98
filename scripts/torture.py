"""Kill blocksnap with SIGKILL at random instants, again and again, and check
after every kill that nothing acknowledged was lost: every snapshot whose
completion was acknowledged reads back exactly, and `verify` is clean.

    torture.py KIND --kills N --minutes M --bin PATH --work DIR [--seed S]

KIND is one of:
  serve   `blocksnap serve` killed while boto3 clients start snapshots, put
          blocks, complete them and read completed ones back, concurrently
  backup  `blocksnap backup` of a changing image (full or incremental)
  gc      `blocksnap gc` compacting while a snapshot was just removed
  import  `blocksnap import` of an archive

Stops after N kills or M minutes, whichever is first; prints what it did
and exits 1 at the first failure, leaving the store in DIR.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

BLOCK = 524288


def block(seed):
    """A deterministic, incompressible 512 KiB block."""
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:BLOCK])


class Failure(Exception):
    pass


class Cli:
    def __init__(self, binary, store):
        self.binary = binary
        self.store = store

    def run(self, *args, check=True, timeout=600):
        result = subprocess.run(
            [self.binary, "--store", self.store, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise Failure(
                f"blocksnap {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def json(self, *args):
        return json.loads(self.run(*args, "--json").stdout)

    def spawn(self, *args):
        return subprocess.Popen(
            [self.binary, "--store", self.store, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def verify(self, sample=1.0):
        result = self.run("verify", "--json", "--sample", str(sample), check=False)
        if result.returncode != 0:
            raise Failure(f"verify is not clean: {result.stdout.decode()} {result.stderr.decode()}")

    def statuses(self):
        return {s["SnapshotId"]: s["Status"] for s in self.json("ls")}

    def restore_sha(self, snapshot, scratch):
        self.run("restore", snapshot, scratch, "--force")
        digest = hashlib.sha256()
        with open(scratch, "rb") as image:
            while chunk := image.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


def sha_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as image:
        while chunk := image.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Window:
    """How long a run lasts, learnt from the runs that finished, so kills
    land anywhere in a run's life (and some runs finish first)."""

    def __init__(self, initial):
        self.longest = initial

    def kill_at_random(self, process, rng):
        """SIGKILL `process` at a random instant of a typical run's life
        (unless it ended first); returns whether it was killed."""
        started = time.monotonic()
        deadline = started + rng.uniform(0, self.longest * 1.15)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.longest = max(self.longest * 0.9, time.monotonic() - started)
                return False
            time.sleep(0.001)
        if process.poll() is not None:
            return False
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def write_image(path, blocks, rng, changes=None):
    """A mixed image: zero, text-like and random blocks. With `changes`,
    rewrites that many random blocks of the existing image instead."""
    if changes is None:
        with open(path, "wb") as image:
            for index in range(blocks):
                kind = index % 4
                if kind == 0:
                    image.write(bytes(BLOCK))
                elif kind == 1:
                    image.write((b"kernel block snapshot log: %d\n" % index) * (BLOCK // 32) + bytes(BLOCK % 32))
                else:
                    image.write(block(rng.randrange(1 << 40)))
        return
    with open(path, "r+b") as image:
        for _ in range(changes):
            image.seek(rng.randrange(blocks) * BLOCK)
            image.write(block(rng.randrange(1 << 40)))


def check_images(cli, expected, scratch, rng, sample):
    """Restores a sample of the completed snapshots and compares hashes."""
    for snapshot in rng.sample(sorted(expected), min(sample, len(expected))):
        got = cli.restore_sha(snapshot, scratch)
        if got != expected[snapshot]:
            raise Failure(f"{snapshot} restored differs ({got} != {expected[snapshot]})")


def cancel_pending(cli):
    for snapshot, status in cli.statuses().items():
        if status == "pending":
            cli.run("cancel", snapshot)


def torture_backup(args, rng, report):
    image = os.path.join(args.work, "disk.img")
    scratch = os.path.join(args.work, "restored.img")
    blocks = 96
    write_image(image, blocks, rng)
    cli = Cli(args.bin, os.path.join(args.work, "store"))
    expected = {}
    latest = None
    window = Window(0.5)
    while report.go():
        write_image(image, blocks, rng, changes=rng.randrange(1, 12))
        image_sha = sha_of(image)
        command = ["backup", image, "--quiet"]
        if latest and rng.random() < 0.7:
            command += ["--parent", latest]
        process = cli.spawn(*command)
        killed = window.kill_at_random(process, rng)
        out, _ = process.communicate()
        report.kill(killed)
        if not killed and process.returncode == 0:
            latest = out.decode().strip()
            expected[latest] = image_sha
        cli.verify()
        statuses = cli.statuses()
        for snapshot in expected:
            if statuses.get(snapshot) != "completed":
                raise Failure(f"acknowledged snapshot {snapshot} is {statuses.get(snapshot)}")
        check_images(cli, expected, scratch, rng, 2)
        cancel_pending(cli)


def torture_gc(args, rng, report):
    image = os.path.join(args.work, "disk.img")
    scratch = os.path.join(args.work, "restored.img")
    blocks = 64
    write_image(image, blocks, rng)
    cli = Cli(args.bin, os.path.join(args.work, "store"))
    expected = {}
    order = []
    window = Window(0.3)
    while report.go():
        write_image(image, blocks, rng, changes=rng.randrange(4, 24))
        snapshot = cli.run("backup", image, "--quiet").stdout.decode().strip()
        expected[snapshot] = sha_of(image)
        order.append(snapshot)
        if len(order) > 4:
            victim = order.pop(rng.randrange(len(order) - 1))
            cli.run("rm", victim)
            del expected[victim]
        process = cli.spawn("gc", "--live-threshold", rng.choice(["1.0", "0.9", "0.5"]))
        killed = window.kill_at_random(process, rng)
        process.communicate()
        report.kill(killed)
        cli.verify()
        check_images(cli, expected, scratch, rng, 2)


def torture_import(args, rng, report):
    image = os.path.join(args.work, "disk.img")
    scratch = os.path.join(args.work, "restored.img")
    source = Cli(args.bin, os.path.join(args.work, "source"))
    write_image(image, 96, rng)
    snapshot = source.run("backup", image, "--quiet").stdout.decode().strip()
    bucket = os.path.join(args.work, "bucket")
    os.makedirs(bucket, exist_ok=True)
    archive = source.run("export", snapshot, "--bucket", bucket, "--quiet").stdout.decode().strip()
    image_sha = sha_of(image)
    cli = Cli(args.bin, os.path.join(args.work, "store"))
    expected = {}
    window = Window(0.5)
    while report.go():
        process = cli.spawn("import", archive, "--quiet")
        killed = window.kill_at_random(process, rng)
        out, _ = process.communicate()
        report.kill(killed)
        if not killed and process.returncode == 0:
            expected[out.decode().strip()] = image_sha
        cli.verify()
        statuses = cli.statuses()
        for done in expected:
            if statuses.get(done) != "completed":
                raise Failure(f"acknowledged import {done} is {statuses.get(done)}")
        check_images(cli, expected, scratch, rng, 1)
        cancel_pending(cli)
        # Keep the store small: drop old imports now and then.
        if len(expected) > 6:
            for old in sorted(expected)[:3]:
                cli.run("rm", old)
                del expected[old]
            cli.run("gc", "--live-threshold", "1.0")


class Serve:
    """A `blocksnap serve` process and boto3 clients hammering it."""

    def __init__(self, args, rng):
        self.args = args
        self.rng = rng
        self.store = os.path.join(args.work, "store")
        self.credentials = os.path.join(args.work, "credentials")
        with open(self.credentials, "w") as file:
            # The CLI acts for owner 000000000000: it sees these snapshots.
            file.write("AKIDTORTURE torture-secret 000000000000\n")
        self.lock = threading.Lock()
        self.completed = {}  # snapshot -> {index: seed}

    def start(self):
        self.process = subprocess.Popen(
            [self.args.bin, "--store", self.store, "serve", "--listen", "127.0.0.1:0",
             "--credentials", self.credentials, "--no-rate-limits"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise Failure(f"serve did not start: {line!r}")
        self.endpoint = "http://" + line.split()[-1]

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client(
            "ebs", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="AKIDTORTURE", aws_secret_access_key="torture-secret",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def work(self, stop, seed):
        """One client: start, put, complete; remember only acknowledged
        completions; read completed snapshots back."""
        rng = random.Random(seed)
        try:
            ebs = self.client()
        except Exception:
            return
        while not stop.is_set():
            try:
                snapshot = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
                content = {}
                for _ in range(rng.randrange(1, 6)):
                    index = rng.randrange(64)
                    seed = rng.randrange(1 << 40)
                    data = block(seed)
                    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
                    ebs.put_snapshot_block(SnapshotId=snapshot, BlockIndex=index, BlockData=data,
                                           DataLength=BLOCK, Checksum=checksum, ChecksumAlgorithm="SHA256")
                    content[index] = seed
                ebs.complete_snapshot(SnapshotId=snapshot, ChangedBlocksCount=len(content))
                with self.lock:
                    self.completed[snapshot] = content
                with self.lock:
                    readable = list(self.completed.items())
                if readable:
                    other, expected = rng.choice(readable)
                    self.read_back(ebs, other, expected)
            except Failure:
                raise
            except Exception:
                if stop.is_set():
                    return
                time.sleep(0.05)

    def read_back(self, ebs, snapshot, expected):
        listed = ebs.list_snapshot_blocks(SnapshotId=snapshot, MaxResults=1000)
        got = {b["BlockIndex"]: b["BlockToken"] for b in listed["Blocks"]}
        if sorted(got) != sorted(expected):
            raise Failure(f"{snapshot} lists {sorted(got)}, expected {sorted(expected)}")
        for index, token in got.items():
            data = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=index, BlockToken=token)["BlockData"].read()
            if data != block(expected[index]):
                raise Failure(f"{snapshot} block {index} differs")


def torture_serve(args, rng, report):
    serve = Serve(args, rng)
    cli = Cli(args.bin, serve.store)
    # A server never ends by itself: kills land within its first seconds.
    serve_window = Window(1.8)
    while report.go():
        serve.start()
        stop = threading.Event()
        errors = []

        def run(seed):
            try:
                serve.work(stop, seed)
            except Failure as failure:
                errors.append(failure)

        clients = [threading.Thread(target=run, args=(rng.randrange(1 << 30),)) for _ in range(3)]
        for thread in clients:
            thread.start()
        killed = serve_window.kill_at_random(serve.process, rng)
        report.kill(killed)
        if not killed:
            raise Failure("serve ended on its own")
        stop.set()
        for thread in clients:
            thread.join()
        if errors:
            raise errors[0]
        # After the kill: verify; every acknowledged completion is there,
        # and a sample reads back exactly through a fresh server.
        cli.verify()
        statuses = cli.statuses()
        for snapshot in serve.completed:
            if statuses.get(snapshot) != "completed":
                raise Failure(f"acknowledged {snapshot} is {statuses.get(snapshot)}")
        serve.start()
        ebs = serve.client()
        for snapshot, content in rng.sample(sorted(serve.completed.items()), min(4, len(serve.completed))):
            serve.read_back(ebs, snapshot, content)
        serve.process.send_signal(signal.SIGTERM)
        if serve.process.wait() != 0:
            raise Failure("serve did not stop cleanly on SIGTERM")
        cancel_pending(cli)
        if len(serve.completed) > 60:
            # A fresh store now and then keeps the checks quick.
            shutil.rmtree(serve.store)
            serve.completed.clear()


class Report:
    def __init__(self, kind, kills, minutes):
        self.kind = kind
        self.kills_wanted = kills
        self.deadline = time.monotonic() + minutes * 60
        self.kills = 0
        self.finished_first = 0
        self.started = time.monotonic()

    def go(self):
        return self.kills < self.kills_wanted and time.monotonic() < self.deadline

    def kill(self, killed):
        if killed:
            self.kills += 1
        else:
            self.finished_first += 1
        done = self.kills + self.finished_first
        if done % 50 == 0:
            print(f"{self.kind}: {self.kills} kills, {self.finished_first} finished first, "
                  f"{time.monotonic() - self.started:.0f} s", flush=True)

    def summary(self):
        return (f"{self.kind}: {self.kills} SIGKILLs mid-run and {self.finished_first} runs that "
                f"finished before their kill, each followed by a clean verify and exact reads, "
                f"in {time.monotonic() - self.started:.0f} s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["serve", "backup", "gc", "import"])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    os.makedirs(args.work, exist_ok=True)
    report = Report(args.kind, args.kills, args.minutes)
    runners = {"serve": torture_serve, "backup": torture_backup, "gc": torture_gc, "import": torture_import}
    try:
        runners[args.kind](args, rng, report)
    except Failure as failure:
        print(f"FAILED ({args.kind}, seed {seed}, after {report.kills} kills): {failure}", flush=True)
        print(f"the store is left in {args.work}", flush=True)
        sys.exit(1)
    print(report.summary() + f" (seed {seed})", flush=True)


if __name__ == "__main__":
    main()
