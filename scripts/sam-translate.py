#!/usr/bin/env python3
"""Print a SAM template as the CloudFormation template AWS deploys, in JSON.

Usage: sam-translate.py TEMPLATE [PARAMETERS_JSON]

Runs the AWS SAM translator (the transform CloudFormation applies to
AWS::Serverless-2016-10-31 templates) offline, so that tests can check what is
deployed: the generated EventBridge rules, Lambda permissions and functions with
their Globals merged in. PARAMETERS_JSON is an object of parameter values (the
template's defaults fill the rest; "AWS::Region" picks the region, us-east-1 by
default), or an array of such objects: then the output is an array of templates,
one per object, for the price of one start of the translator. Intrinsic functions the translator leaves alone
(Ref, Fn::Sub, Fn::If, ...) stay in the output in their long form.

Needs aws-sam-translator, which the pinned aws-sam-cli installs into .venv.
"""

import json
import logging
import os
import sys

from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

# Stands in for `sam package`, which uploads CodeUri and writes its S3 location.
PACKAGED_CODE = "s3://slotkeeper-template-test/code.zip"


class NoManagedPolicies(ManagedPolicyLoader):
    """The template attaches only its own policies and AWS-managed ones by ARN, so
    the translator never needs IAM's list of managed policy names (an API call)."""

    def __init__(self):  # no IAM client
        pass

    def load(self):
        return {}


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        source = f.read()
    parameters = json.loads(argv[2]) if len(argv) == 3 else {}
    # The translator fills AWS::Region and AWS::Partition from a boto3 session; no
    # credentials or network are involved.
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    # The translator warns about its own usage metrics, which nobody publishes here.
    logging.disable(logging.WARNING)
    if isinstance(parameters, list):
        out = [translate(source, p) for p in parameters]
    else:
        out = translate(source, parameters)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def translate(source, parameters):
    """Translate the template source with one set of parameter values."""
    os.environ["AWS_DEFAULT_REGION"] = parameters.get("AWS::Region", "us-east-1")
    template = yaml_parse(source)
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["CodeUri"] = PACKAGED_CODE
    return transform(template, dict(parameters), NoManagedPolicies())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
