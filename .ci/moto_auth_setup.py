"""Prepares a freshly started moto server (authentication still off) for
burrow's credentials test: creates bucket `burrow-auth` and one IAM user
allowed s3:*, then turns authentication on for every later request.

    python moto_auth_setup.py http://127.0.0.1:<port>

Prints "<access key id> <secret access key>" on stdout. Run with the
python of moto's environment (it needs boto3, which moto depends on).
Used by .ci/s3.sh and by the S3 tests (tests/conformance/moto.rs).
"""
import json
import sys
import urllib.request

import boto3

endpoint = sys.argv[1]
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", **kw).create_bucket(Bucket="burrow-auth")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="burrow-test")
iam.put_user_policy(UserName="burrow-test", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="burrow-test")["AccessKey"]
urllib.request.urlopen(urllib.request.Request(
    endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
    headers={"Content-Type": "text/plain"}), timeout=10).read()
print(key["AccessKeyId"], key["SecretAccessKey"])
