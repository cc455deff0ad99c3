package awsapi

import (
	"errors"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
)

func apiErr(code, msg string) error {
	return fmt.Errorf("operation failed: %w", &smithy.GenericAPIError{Code: code, Message: msg})
}

func TestClassification(t *testing.T) {
	tests := []struct {
		name                                          string
		err                                           error
		notFound, throttled, condition, noAction, bad bool
	}{
		{"nil", nil, false, false, false, false, false},
		{"plain error", errors.New("boom"), false, false, false, false, false},
		{"instance not found", apiErr("InvalidInstanceID.NotFound", ""), true, false, false, false, false},
		{"attachment gone", apiErr("InvalidAttachment.NotFound", ""), true, false, false, false, false},
		{"ec2 throttle", apiErr("RequestLimitExceeded", ""), false, true, false, false, false},
		{"route53 prior request", apiErr("PriorRequestNotComplete", ""), false, true, false, false, false},
		{"dynamodb condition (typed)", fmt.Errorf("x: %w", &types.ConditionalCheckFailedException{}), false, false, true, false, false},
		{"dynamodb condition (code)", apiErr("ConditionalCheckFailedException", ""), false, false, true, false, false},
		{"lifecycle already completed", apiErr("ValidationError", "No active Lifecycle Action found with instance ID i-1"), false, false, false, true, false},
		{"other validation error", apiErr("ValidationError", "Group not found"), false, false, false, false, false},
		{"volume mid-transition", apiErr("IncorrectState", ""), false, false, false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := []bool{IsNotFound(tt.err), IsThrottled(tt.err), IsConditionFailed(tt.err), IsNoActiveLifecycleAction(tt.err), IsIncorrectState(tt.err)}
			want := []bool{tt.notFound, tt.throttled, tt.condition, tt.noAction, tt.bad}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("classifier %d = %v, want %v", i, got[i], want[i])
				}
			}
			if tt.notFound && IgnoreNotFound(tt.err) != nil || !tt.notFound && !errors.Is(IgnoreNotFound(tt.err), tt.err) {
				t.Errorf("IgnoreNotFound(%v) = %v", tt.err, IgnoreNotFound(tt.err))
			}
		})
	}
}
