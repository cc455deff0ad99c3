package lease

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Holding is who holds, and who last held, one slot: the few attributes of a lease
// item that say whether an instance is one of the cluster's.
type Holding struct {
	Slot       int    `dynamodbav:"slot"`
	State      State  `dynamodbav:"state"`
	Holder     string `dynamodbav:"holder,omitempty"`
	LastHolder string `dynamodbav:"last_holder,omitempty"`
}

// Holdings returns the holder and last holder of every lease item of the cluster, read
// consistently. It reads only those attributes, so for any slot count the whole
// cluster fits one Query page (a full lease item carries its history): a foreign
// instance's event costs one call.
func (s *Store) Holdings(ctx context.Context) ([]Holding, error) {
	in := &dynamodb.QueryInput{
		TableName:                 &s.table,
		KeyConditionExpression:    aws.String("#c = :c"),
		ProjectionExpression:      aws.String("#s, #st, #h, #lh"),
		ExpressionAttributeNames:  map[string]string{"#c": "cluster", "#s": "slot", "#st": "state", "#h": "holder", "#lh": "last_holder"},
		ExpressionAttributeValues: map[string]types.AttributeValue{":c": str(s.cluster)},
		ConsistentRead:            aws.Bool(true),
	}
	var out []Holding
	for p := dynamodb.NewQueryPaginator(s.db, in); p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the holders of cluster %s: %w", s.cluster, err)
		}
		for _, item := range page.Items {
			var h Holding
			if err := attributevalue.UnmarshalMap(item, &h); err != nil {
				return nil, fmt.Errorf("decoding lease item: %w", err)
			}
			if h.State == "" {
				h.State = Free
			}
			out = append(out, h)
		}
	}
	return out, nil
}

// Involves reports whether instance holds a slot (claimed, bound or draining) or was
// the last holder of one.
func Involves(holdings []Holding, instance string) (Holding, bool) {
	for _, h := range holdings {
		if instance != "" && ((h.State != Free && h.Holder == instance) || h.LastHolder == instance) {
			return h, true
		}
	}
	return Holding{}, false
}
