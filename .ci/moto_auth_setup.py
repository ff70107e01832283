"""Prepares a freshly started moto server (authentication still off) for
burrow's credentials and least-privilege tests: creates bucket
`burrow-auth`, one IAM user allowed s3:*, and one user per role of
blobstore/iam/ (consumer, producer, gc) holding exactly that role's policy
for the datasets under `burrow-auth/roles/`; then turns authentication on
for every later request.

    python moto_auth_setup.py http://127.0.0.1:<port>

Prints "<access key id> <secret access key>" of the s3:* user on the first
line, then "<role> <access key id> <secret access key>" a line per role.
Run with the python of moto's environment (it needs boto3, which moto
depends on). Used by .ci/s3.sh and by the S3 tests
(tests/conformance/moto.rs).
"""
import json
import pathlib
import sys
import urllib.request

import boto3

BUCKET = "burrow-auth"
# The roles' policies cover every dataset one level under `roles/` (each
# test run uses a dataset prefix `roles/<run>/` of its own).
ROLES_PREFIX = "roles/*/"
ROLES = ("consumer", "producer", "gc")
IAM_DIR = pathlib.Path(__file__).resolve().parent.parent / "blobstore" / "iam"

endpoint = sys.argv[1]
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
iam = boto3.client("iam", **kw)


def user(name, policy):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


lines = [" ".join(user("burrow-test", json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})))]
for role in ROLES:
    template = (IAM_DIR / f"{role}.json").read_text()
    policy = template.replace("${bucket}", BUCKET).replace("${prefix}", ROLES_PREFIX)
    json.loads(policy)  # a template that is not JSON fails here, by name
    lines.append(" ".join((role,) + user(f"burrow-{role}", policy)))
urllib.request.urlopen(urllib.request.Request(
    endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
    headers={"Content-Type": "text/plain"}), timeout=10).read()
print("\n".join(lines))
