"""Real S3 clients (boto3 and the AWS CLI) against `ferry s3 serve`.

Run by tests/s3.rs: python clients.py MODE, with FERRY_S3_ENDPOINT, FERRY_S3_AK, FERRY_S3_SK
in the environment (and AWS_CLI: the aws command). MODE is `main` (the API end to end), `agent`
(a few calls to `ferry agent --s3-listen`) or `limits` (a server started with --max-inflight 1 --max-object-size 1M). Prints one line per
check and 'N passed, N failed' at the end; exits 1 if any check failed.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

EP = os.environ["FERRY_S3_ENDPOINT"]
AK = os.environ["FERRY_S3_AK"]
SK = os.environ["FERRY_S3_SK"]
RESULTS = []


def client(ak=AK, sk=SK, signed=True):
    cfg = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        signature_version="s3v4" if signed else botocore.UNSIGNED,
    )
    return boto3.client(
        "s3", endpoint_url=EP, aws_access_key_id=ak, aws_secret_access_key=sk,
        region_name="us-east-1", config=cfg,
    )


def check(name):
    def wrap(f):
        try:
            f()
            RESULTS.append((name, None))
            print(f"ok - {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - a failed check is reported, then the next runs
            RESULTS.append((name, e))
            print(f"FAILED - {name}: {e!r}", flush=True)
        return f
    return wrap


def code_of(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("the call succeeded")


def expect(got, want):
    if got != want:
        raise AssertionError(f"got {got!r}, want {want!r}")


def keys_of(s3, bucket, **kw):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kw):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def main_checks():
    s3 = client()

    @check("create and list buckets; a second create is refused")
    def _():
        s3.create_bucket(Bucket="bk1")
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert "bk1" in names, names
        expect(code_of(lambda: s3.create_bucket(Bucket="bk1"))[0], "BucketAlreadyOwnedByYou")

    @check("put, get, head")
    def _():
        r = s3.put_object(Bucket="bk1", Key="dir/a.txt", Body=b"hello")
        assert r["ETag"], r
        expect(s3.get_object(Bucket="bk1", Key="dir/a.txt")["Body"].read(), b"hello")
        h = s3.head_object(Bucket="bk1", Key="dir/a.txt")
        expect(h["ContentLength"], 5)
        expect(h["ETag"], r["ETag"])

    @check("ranged get; an unsatisfiable range is InvalidRange")
    def _():
        g = s3.get_object(Bucket="bk1", Key="dir/a.txt", Range="bytes=1-3")
        expect(g["Body"].read(), b"ell")
        expect(g["ContentRange"], "bytes 1-3/5")
        expect(s3.get_object(Bucket="bk1", Key="dir/a.txt", Range="bytes=-2")["Body"].read(), b"lo")
        expect(s3.get_object(Bucket="bk1", Key="dir/a.txt", Range="bytes=3-")["Body"].read(), b"lo")
        expect(code_of(lambda: s3.get_object(Bucket="bk1", Key="dir/a.txt", Range="bytes=10-20")),
               ("InvalidRange", 416))

    @check("an overwrite wins")
    def _():
        for i in range(5):
            s3.put_object(Bucket="bk1", Key="over", Body=f"v{i}".encode() * (i + 1))
        expect(s3.get_object(Bucket="bk1", Key="over")["Body"].read(), b"v4" * 5)

    @check("a deleted key stays deleted")
    def _():
        s3.put_object(Bucket="bk1", Key="gone/x", Body=b"1")
        s3.delete_object(Bucket="bk1", Key="gone/x")
        s3.put_object(Bucket="bk1", Key="gone/y", Body=b"2")
        expect(code_of(lambda: s3.get_object(Bucket="bk1", Key="gone/x")), ("NoSuchKey", 404))
        expect(code_of(lambda: s3.head_object(Bucket="bk1", Key="gone/x"))[1], 404)
        expect(keys_of(s3, "bk1", Prefix="gone/"), ["gone/y"])
        s3.delete_object(Bucket="bk1", Key="never-was")  # S3: 204 for an absent key too

    @check("list: prefix, delimiter, pagination (max-keys and continuation tokens)")
    def _():
        want = sorted([f"p/k{i:02d}" for i in range(23)] + ["p/sub/1", "p/sub/2"])
        for k in want + ["q/z", "top"]:
            s3.put_object(Bucket="bk1", Key=k, Body=k.encode())
        expect(keys_of(s3, "bk1", Prefix="p/", PaginationConfig={"PageSize": 7}), want)
        pages = list(s3.get_paginator("list_objects_v2").paginate(
            Bucket="bk1", Prefix="p/", PaginationConfig={"PageSize": 10}))
        expect(len(pages), 3)
        expect([p["KeyCount"] for p in pages], [10, 10, 5])
        r = s3.list_objects_v2(Bucket="bk1", Delimiter="/")
        expect([c["Prefix"] for c in r["CommonPrefixes"]], ["dir/", "gone/", "p/", "q/"])
        expect([o["Key"] for o in r["Contents"]], ["over", "top"])
        r = s3.list_objects_v2(Bucket="bk1", Prefix="p/", Delimiter="/", MaxKeys=1000)
        expect([c["Prefix"] for c in r["CommonPrefixes"]], ["p/sub/"])
        expect(len(r["Contents"]), 23)
        r = s3.list_objects_v2(Bucket="bk1", Prefix="p/", StartAfter="p/k20")
        expect([o["Key"] for o in r["Contents"]], ["p/k21", "p/k22", "p/sub/1", "p/sub/2"])
        expect(r["Contents"][0]["Size"], 5)

    @check("keys with spaces, '+' and '%' round-trip through put, list and get")
    def _():
        k = "odd/sp ace+plus%pct ü.txt"
        s3.put_object(Bucket="bk1", Key=k, Body=b"odd")
        expect(keys_of(s3, "bk1", Prefix="odd/"), [k])
        expect(s3.get_object(Bucket="bk1", Key=k)["Body"].read(), b"odd")

    @check("multipart upload through boto3's transfer manager (12 MiB in 5 MiB parts)")
    def _():
        data = os.urandom(12 << 20)
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.seek(0)
            cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
            s3.upload_fileobj(f, "bk1", "big/obj", Config=cfg)
        got = s3.get_object(Bucket="bk1", Key="big/obj")["Body"].read()
        expect(len(got), len(data))
        assert got == data, "content differs"
        g = s3.get_object(Bucket="bk1", Key="big/obj", Range=f"bytes={5 << 20}-{(5 << 20) + 9}")
        expect(g["Body"].read(), data[5 << 20:(5 << 20) + 10])

    @check("multipart: abort, wrong ETag, small part, unknown upload")
    def _():
        up = s3.create_multipart_upload(Bucket="bk1", Key="mp/x")["UploadId"]
        e1 = s3.upload_part(Bucket="bk1", Key="mp/x", UploadId=up, PartNumber=1, Body=b"a" * 100)["ETag"]
        e2 = s3.upload_part(Bucket="bk1", Key="mp/x", UploadId=up, PartNumber=2, Body=b"b" * 100)["ETag"]
        parts = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
        expect(code_of(lambda: s3.complete_multipart_upload(
            Bucket="bk1", Key="mp/x", UploadId=up, MultipartUpload=parts))[0], "EntityTooSmall")
        bad = {"Parts": [{"PartNumber": 1, "ETag": '"0000"'}]}
        expect(code_of(lambda: s3.complete_multipart_upload(
            Bucket="bk1", Key="mp/x", UploadId=up, MultipartUpload=bad))[0], "InvalidPart")
        one = {"Parts": [{"PartNumber": 2, "ETag": e2}]}
        s3.complete_multipart_upload(Bucket="bk1", Key="mp/x", UploadId=up, MultipartUpload=one)
        expect(s3.get_object(Bucket="bk1", Key="mp/x")["Body"].read(), b"b" * 100)
        up2 = s3.create_multipart_upload(Bucket="bk1", Key="mp/y")["UploadId"]
        s3.abort_multipart_upload(Bucket="bk1", Key="mp/y", UploadId=up2)
        expect(code_of(lambda: s3.upload_part(
            Bucket="bk1", Key="mp/y", UploadId=up2, PartNumber=1, Body=b"x"))[0], "NoSuchUpload")
        expect(code_of(lambda: s3.get_object(Bucket="bk1", Key="mp/y"))[0], "NoSuchKey")

    @check("checksums the client sends are checked: a body that does not match is BadDigest")
    def _():
        for alg in ["CRC32", "SHA1", "SHA256"]:  # CRC32C needs botocore[crt]
            s3.put_object(Bucket="bk1", Key=f"sum/{alg}", Body=b"summed", ChecksumAlgorithm=alg)
            expect(s3.get_object(Bucket="bk1", Key=f"sum/{alg}")["Body"].read(), b"summed")
        url = s3.generate_presigned_url("put_object", Params={"Bucket": "bk1", "Key": "sum/bad"})
        for header in [("Content-MD5", "XUFAKrxLKna5cZ2REBfFkg=="),  # md5 of "hello"
                       ("x-amz-checksum-crc32", "NhCmhg==")]:      # crc32 of "hello"
            req = urllib.request.Request(url, data=b"hellO", method="PUT", headers=dict([header]))
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError(f"a body not matching its {header[0]} was taken")
            except urllib.error.HTTPError as e:
                body = e.read().decode()
                expect(e.code, 400)
                assert "<Code>BadDigest</Code>" in body, body
            expect(code_of(lambda: s3.head_object(Bucket="bk1", Key="sum/bad"))[1], 404)
        req = urllib.request.Request(url, data=b"hello", method="PUT",
                                     headers={"Content-MD5": "XUFAKrxLKna5cZ2REBfFkg=="})
        urllib.request.urlopen(req, timeout=10)
        expect(s3.get_object(Bucket="bk1", Key="sum/bad")["Body"].read(), b"hello")

    @check("a missing bucket is NoSuchBucket")
    def _():
        expect(code_of(lambda: s3.get_object(Bucket="nobucket", Key="k")), ("NoSuchBucket", 404))
        expect(code_of(lambda: s3.put_object(Bucket="nobucket", Key="k", Body=b"x"))[0], "NoSuchBucket")
        expect(code_of(lambda: s3.list_objects_v2(Bucket="nobucket"))[0], "NoSuchBucket")

    @check("a bad signature is refused (SignatureDoesNotMatch), an unknown key too")
    def _():
        bad = client(sk=SK + "x")
        expect(code_of(lambda: bad.list_buckets()), ("SignatureDoesNotMatch", 403))
        expect(code_of(lambda: bad.get_object(Bucket="bk1", Key="dir/a.txt"))[1], 403)
        expect(code_of(lambda: bad.put_object(Bucket="bk1", Key="evil", Body=b"x"))[1], 403)
        expect(code_of(lambda: client(ak="NOSUCHKEY1").list_buckets())[0], "InvalidAccessKeyId")
        expect(code_of(lambda: s3.head_object(Bucket="bk1", Key="evil"))[1], 404)

    @check("anonymous access is refused (AccessDenied)")
    def _():
        anon = client(signed=False)
        expect(code_of(lambda: anon.get_object(Bucket="bk1", Key="dir/a.txt")), ("AccessDenied", 403))
        expect(code_of(lambda: anon.put_object(Bucket="bk1", Key="anon", Body=b"x"))[1], 403)
        try:
            urllib.request.urlopen(f"{EP}/bk1/dir/a.txt", timeout=10)
            raise AssertionError("an unsigned GET succeeded")
        except urllib.error.HTTPError as e:
            expect(e.code, 403)
        expect(code_of(lambda: s3.head_object(Bucket="bk1", Key="anon"))[1], 404)

    @check("the AWS CLI: mb, cp up (multipart) and down, ls, rm, rb")
    def _():
        aws = os.environ["AWS_CLI"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK,
                   AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null")

        def run(*args, ok=(0,)):
            r = subprocess.run([aws, "--endpoint-url", EP, *args], env=env,
                               capture_output=True, text=True, timeout=120)
            if r.returncode not in ok:
                raise AssertionError(f"aws {' '.join(args)}: {r.returncode}: {r.stderr}")
            return r.stdout

        with tempfile.TemporaryDirectory() as d:
            src, back = os.path.join(d, "src"), os.path.join(d, "back")
            data = os.urandom(20 << 20)  # over the CLI's 8 MiB threshold: multipart
            with open(src, "wb") as f:
                f.write(data)
            run("s3", "mb", "s3://cli")
            run("s3", "cp", src, "s3://cli/in/file.bin")
            ls = run("s3", "ls", "s3://cli/in/")
            assert "file.bin" in ls and str(20 << 20) in ls, ls
            run("s3", "cp", "s3://cli/in/file.bin", back)
            with open(back, "rb") as f:
                assert f.read() == data, "the CLI's download differs"
            run("s3", "rm", "s3://cli/in/file.bin")
            # ls of nothing: exit 1 and no output.
            expect(run("s3", "ls", "s3://cli/in/", ok=(1,)).strip(), "")
            run("s3", "rb", "s3://cli")
            expect(code_of(lambda: s3.head_bucket(Bucket="cli"))[1], 404)

    @check("delete bucket: a full one is refused, an empty one goes")
    def _():
        s3.create_bucket(Bucket="bk2")
        s3.put_object(Bucket="bk2", Key="a/b", Body=b"1")
        expect(code_of(lambda: s3.delete_bucket(Bucket="bk2"))[0], "BucketNotEmpty")
        s3.delete_object(Bucket="bk2", Key="a/b")
        s3.delete_bucket(Bucket="bk2")
        expect(code_of(lambda: s3.head_bucket(Bucket="bk2"))[1], 404)
        assert "bk2" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def limits_checks():
    s3 = client()
    s3.create_bucket(Bucket="lim")

    @check("an object over --max-object-size is EntityTooLarge")
    def _():
        try:
            s3.put_object(Bucket="lim", Key="big", Body=b"x" * (2 << 20))
            raise AssertionError("a 2 MiB object went in under a 1 MiB limit")
        except botocore.exceptions.ClientError as e:
            expect(e.response["Error"]["Code"], "EntityTooLarge")
        except botocore.exceptions.ConnectionError:
            pass  # the server answered and closed before the client finished sending
        expect(code_of(lambda: s3.head_object(Bucket="lim", Key="big"))[1], 404)
        s3.put_object(Bucket="lim", Key="small", Body=b"x" * (1 << 20))

    @check("with --max-inflight 1, a second request meanwhile gets 503 SlowDown")
    def _():
        url = s3.generate_presigned_url("put_object", Params={"Bucket": "lim", "Key": "slow"})
        u = urllib.parse.urlsplit(url)
        sock = socket.create_connection((u.hostname, u.port), timeout=20)
        head = (f"PUT {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                "Content-Length: 10\r\n\r\n")
        sock.sendall(head.encode() + b"abc")
        time.sleep(0.5)  # the slow upload now holds the only slot
        expect(code_of(lambda: s3.list_buckets()), ("SlowDown", 503))
        sock.sendall(b"defghij")
        reply = sock.recv(4096).decode(errors="replace")
        sock.close()
        assert reply.startswith("HTTP/1.1 200"), reply
        expect(s3.get_object(Bucket="lim", Key="slow")["Body"].read(), b"abcdefghij")
        s3.list_buckets()  # the slot is free again


def agent_checks():
    s3 = client()

    @check("the agent's endpoint: create bucket, put, get, list, delete")
    def _():
        s3.create_bucket(Bucket="agt")
        for i in range(5):
            s3.put_object(Bucket="agt", Key=f"k/{i}", Body=str(i).encode() * 100)
        expect(s3.get_object(Bucket="agt", Key="k/3")["Body"].read(), b"3" * 100)
        expect(keys_of(s3, "agt", Prefix="k/"), [f"k/{i}" for i in range(5)])
        s3.delete_object(Bucket="agt", Key="k/0")
        expect(code_of(lambda: s3.get_object(Bucket="agt", Key="k/0"))[0], "NoSuchKey")
        expect(code_of(lambda: client(sk=SK + "x").list_buckets())[1], 403)


if __name__ == "__main__":
    {"main": main_checks, "limits": limits_checks, "agent": agent_checks}[sys.argv[1]]()
    failed = sum(1 for _, e in RESULTS if e is not None)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
