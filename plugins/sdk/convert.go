// convert.go: mechanical conversion between the hand-written SDK types and
// the generated pluginv1 messages. No validation here beyond dtype names
// (binding checks bounds: arenas.go; the host checks grants: host/refs.go).
package sdk

import (
	pb "github.com/sdbridge/sdbridge/plugins/sdk/internal/pluginv1"
)

var dtypeToPB = map[DType]pb.DType{F32: pb.DType_DTYPE_F32, F16: pb.DType_DTYPE_F16, BF16: pb.DType_DTYPE_BF16, I64: pb.DType_DTYPE_I64}

func dtypeFromPB(d pb.DType) DType {
	for k, v := range dtypeToPB {
		if v == d {
			return k
		}
	}
	return DType("unknown(" + d.String() + ")")
}

func shapeToPB(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}

func shapeFromPB(s []int64) []int {
	out := make([]int, len(s))
	for i, d := range s {
		out[i] = int(d)
	}
	return out
}

func refToPB(r TensorRef) *pb.TensorRef {
	return &pb.TensorRef{Name: r.Name, Arena: r.Arena, Offset: r.Offset, Dtype: dtypeToPB[r.DType], Shape: shapeToPB(r.Shape), Writable: r.Writable}
}

func refFromPB(r *pb.TensorRef) TensorRef {
	if r == nil {
		return TensorRef{}
	}
	return TensorRef{Name: r.Name, Arena: r.Arena, Offset: r.Offset, DType: dtypeFromPB(r.Dtype), Shape: shapeFromPB(r.Shape), Writable: r.Writable}
}

func refsToPB(rs []TensorRef) []*pb.TensorRef {
	out := make([]*pb.TensorRef, len(rs))
	for i, r := range rs {
		out[i] = refToPB(r)
	}
	return out
}

func refsFromPB(rs []*pb.TensorRef) []TensorRef {
	out := make([]TensorRef, len(rs))
	for i, r := range rs {
		out[i] = refFromPB(r)
	}
	return out
}

func tensorsToPB(ts []*Tensor) []*pb.TensorRef {
	out := make([]*pb.TensorRef, 0, len(ts))
	for _, t := range ts {
		if t != nil {
			out = append(out, refToPB(t.TensorRef))
		}
	}
	return out
}

func tensorToPB(t *Tensor) *pb.TensorRef {
	if t == nil {
		return nil
	}
	return refToPB(t.TensorRef)
}

func infosToPB(is []TensorInfo) []*pb.TensorInfo {
	out := make([]*pb.TensorInfo, len(is))
	for i, x := range is {
		out[i] = &pb.TensorInfo{Name: x.Name, Dtype: dtypeToPB[x.DType], Shape: shapeToPB(x.Shape)}
	}
	return out
}

func infosFromPB(is []*pb.TensorInfo) []TensorInfo {
	out := make([]TensorInfo, len(is))
	for i, x := range is {
		out[i] = TensorInfo{Name: x.Name, DType: dtypeFromPB(x.Dtype), Shape: shapeFromPB(x.Shape)}
	}
	return out
}

func paramsToPB(p Params) []*pb.Param {
	out := make([]*pb.Param, len(p))
	for i, x := range p {
		out[i] = &pb.Param{Name: x.Name, Value: x.Value}
	}
	return out
}

func paramsFromPB(p []*pb.Param) Params {
	out := make(Params, len(p))
	for i, x := range p {
		out[i] = Param{Name: x.Name, Value: x.Value}
	}
	return out
}

var paramTypeToPB = map[ParamType]pb.ParamType{ParamString: pb.ParamType_PARAM_TYPE_STRING, ParamFloat: pb.ParamType_PARAM_TYPE_FLOAT, ParamInt: pb.ParamType_PARAM_TYPE_INT, ParamBool: pb.ParamType_PARAM_TYPE_BOOL, ParamFile: pb.ParamType_PARAM_TYPE_FILE}

func describeToPB(d *DescribeResponse) *pb.DescribeResponse {
	out := &pb.DescribeResponse{Name: d.Name, Version: d.Version, ApiMinor: d.APIMinor}
	for _, c := range d.Capabilities {
		out.Capabilities = append(out.Capabilities, string(c))
	}
	for _, s := range d.Params {
		out.Params = append(out.Params, &pb.ParamSpec{Name: s.Name, Type: paramTypeToPB[s.Type], DefaultValue: s.Default, Help: s.Help, Repeated: s.Repeated})
	}
	return out
}

func describeFromPB(d *pb.DescribeResponse) *DescribeResponse {
	out := &DescribeResponse{Name: d.Name, Version: d.Version, APIMinor: d.ApiMinor}
	for _, c := range d.Capabilities {
		out.Capabilities = append(out.Capabilities, Capability(c))
	}
	for _, s := range d.Params {
		t := ParamString
		for k, v := range paramTypeToPB {
			if v == s.Type {
				t = k
			}
		}
		out.Params = append(out.Params, ParamSpec{Name: s.Name, Type: t, Default: s.DefaultValue, Help: s.Help, Repeated: s.Repeated})
	}
	return out
}
