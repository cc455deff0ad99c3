package awsapi

import (
	"errors"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
)

// Code returns the AWS error code carried by err, or "" when err is not an API error.
func Code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// notFound are the codes AWS uses for "that resource does not exist".
var notFound = map[string]bool{
	"InvalidInstanceID.NotFound":         true,
	"InvalidVolume.NotFound":             true,
	"InvalidNetworkInterfaceID.NotFound": true,
	"InvalidAttachmentID.NotFound":       true,
	"InvalidAttachment.NotFound":         true,
	"InvalidSubnetID.NotFound":           true,
	"ResourceNotFoundException":          true,
}

// IsNotFound reports whether err says the resource does not exist.
func IsNotFound(err error) bool { return notFound[Code(err)] }

// IgnoreNotFound returns nil for a not-found error and err otherwise.
func IgnoreNotFound(err error) error {
	if IsNotFound(err) {
		return nil
	}
	return err
}

// throttled are the throttling codes of the services slotkeeper calls.
var throttled = map[string]bool{
	"RequestLimitExceeded":                   true,
	"Throttling":                             true,
	"ThrottlingException":                    true,
	"ProvisionedThroughputExceededException": true,
	"RequestThrottled":                       true,
	"RequestThrottledException":              true,
	"TooManyRequestsException":               true,
	"PriorRequestNotComplete":                true,
}

// IsThrottled reports whether err is AWS asking the caller to slow down.
func IsThrottled(err error) bool { return throttled[Code(err)] }

// IsConditionFailed reports whether err is a failed DynamoDB condition: someone else
// changed the item since it was read.
func IsConditionFailed(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf) || Code(err) == "ConditionalCheckFailedException"
}

// IsNoActiveLifecycleAction reports whether err says the lifecycle action is no longer
// pending: it was completed already (by an earlier delivery of the same event) or it
// timed out. Either way there is nothing left to complete.
func IsNoActiveLifecycleAction(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ValidationError" &&
		strings.Contains(strings.ToLower(ae.ErrorMessage()), "no active lifecycle action")
}

// incorrectState are the EC2 codes for "the resource is in the wrong state for that
// call"; they are transient while an attachment settles.
var incorrectState = map[string]bool{
	"IncorrectState":         true,
	"IncorrectInstanceState": true,
	"VolumeInUse":            true,
}

// IsIncorrectState reports whether err says the resource is mid-transition.
func IsIncorrectState(err error) bool { return incorrectState[Code(err)] }
