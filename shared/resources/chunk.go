package resources

import (
	"context"
	"fmt"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// MaxFilterValues is how many values EC2 accepts in one filter of a Describe call
// (and how many ids slotkeeper puts in one request): "You can specify up to 200
// values per filter". Every describe that names many instances or volumes is split
// into requests of at most this many, and every answer is read page by page, so the
// cost of a call grows linearly with the number of slots, never past a limit.
const MaxFilterValues = 200

// Chunks splits items into consecutive slices of at most size items (the last may be
// shorter). It returns nil for no items. The slices share items' backing array.
func Chunks[T any](items []T, size int) [][]T {
	if size <= 0 {
		panic(fmt.Sprintf("resources.Chunks: size %d", size))
	}
	var out [][]T
	for start := 0; start < len(items); start += size {
		out = append(out, items[start:min(start+size, len(items))])
	}
	return out
}

// unique returns ids without empty strings and duplicates, sorted (so that requests
// are the same whatever order the caller found the ids in).
func unique(ids []string) []string {
	out := slices.DeleteFunc(slices.Clone(ids), func(s string) bool { return s == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// EachInstance calls fn for every instance of ids that EC2 knows, describing them in
// requests of at most MaxFilterValues ids, each read to its last page. It filters by
// instance id rather than naming the ids, so an id EC2 no longer knows is left out
// instead of failing the whole request.
func EachInstance(ctx context.Context, api awsapi.EC2, ids []string, fn func(types.Instance)) error {
	for _, chunk := range Chunks(unique(ids), MaxFilterValues) {
		p := ec2.NewDescribeInstancesPaginator(api, &ec2.DescribeInstancesInput{
			Filters: []types.Filter{{Name: aws.String("instance-id"), Values: chunk}},
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return fmt.Errorf("describing %d instances (%s … %s): %w", len(chunk), chunk[0], chunk[len(chunk)-1], err)
			}
			for _, r := range page.Reservations {
				for _, i := range r.Instances {
					fn(i)
				}
			}
		}
	}
	return nil
}

// EachVolume calls fn for every volume of ids that EC2 knows, in requests of at most
// MaxFilterValues ids (a volume-id filter, read page by page: an id EC2 does not know is
// simply absent).
func EachVolume(ctx context.Context, api awsapi.EC2, ids []string, fn func(types.Volume)) error {
	for _, chunk := range Chunks(unique(ids), MaxFilterValues) {
		p := ec2.NewDescribeVolumesPaginator(api, &ec2.DescribeVolumesInput{
			Filters: []types.Filter{{Name: aws.String("volume-id"), Values: chunk}},
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return fmt.Errorf("describing %d volumes (%s … %s): %w", len(chunk), chunk[0], chunk[len(chunk)-1], err)
			}
			for _, v := range page.Volumes {
				fn(v)
			}
		}
	}
	return nil
}

// EachNetworkInterface calls fn for every network interface of ids that EC2 knows, in
// requests of at most MaxFilterValues ids (a network-interface-id filter, read page by
// page).
func EachNetworkInterface(ctx context.Context, api awsapi.EC2, ids []string, fn func(types.NetworkInterface)) error {
	for _, chunk := range Chunks(unique(ids), MaxFilterValues) {
		p := ec2.NewDescribeNetworkInterfacesPaginator(api, &ec2.DescribeNetworkInterfacesInput{
			Filters: []types.Filter{{Name: aws.String("network-interface-id"), Values: chunk}},
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return fmt.Errorf("describing %d network interfaces (%s … %s): %w", len(chunk), chunk[0], chunk[len(chunk)-1], err)
			}
			for _, n := range page.NetworkInterfaces {
				fn(n)
			}
		}
	}
	return nil
}
